package ref_test

import (
	"testing"

	"github.com/zimage/zimage/engine/enginetest"
	"github.com/zimage/zimage/engine/ref"
)

// The conformance suite on the reference itself: it exercises the suite in
// CI without Vulkan, and its sampled checks (computed independently in
// float64) cross-check ref on the larger shapes. The big SD shapes are
// skipped: the naive backend would need minutes for them.
func TestConformance(t *testing.T) {
	b := ref.New()
	defer b.Close()
	enginetest.All(t, b, enginetest.SmallOnly())
	if s := b.MemStats(); s.InUse != 0 {
		t.Errorf("the suite leaked %d bytes", s.InUse)
	}
}

// The budget subtest needs a backend with a budget.
func TestConformanceBudget(t *testing.T) {
	b := ref.New(ref.WithBudget(1 << 20))
	defer b.Close()
	enginetest.Memory(t, b)
}

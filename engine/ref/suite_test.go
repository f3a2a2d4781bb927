package ref_test

import (
	"testing"

	"github.com/zimage/zimage/engine"
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

// FuzzConv2d drives the suite's fuzz checker on the reference itself: big
// enough cases take the sampled path, which recomputes entries
// independently; kernels larger than the padded input must be rejected.
func FuzzConv2d(f *testing.F) {
	f.Add(uint8(1), uint8(3), uint8(17), uint8(13), uint8(5), uint8(3), uint8(1), uint8(1), false)
	f.Add(uint8(2), uint8(64), uint8(40), uint8(33), uint8(64), uint8(3), uint8(2), uint8(1), true) // sampled
	f.Add(uint8(1), uint8(2), uint8(2), uint8(3), uint8(1), uint8(5), uint8(1), uint8(0), false)    // kernel too large
	b := ref.New()
	f.Fuzz(func(t *testing.T, n, c, h, w, o, k, stride, pad uint8, f16 bool) {
		dt := engine.F32
		if f16 {
			dt = engine.F16
		}
		// Bound the sizes so one case stays well under a second.
		enginetest.CheckConv2d(t, b, int(n%2)+1, int(c%64)+1, int(h%48)+1, int(w%48)+1, int(o%64)+1,
			int(k%5)+1, int(stride%3)+1, int(pad%3), dt)
	})
}

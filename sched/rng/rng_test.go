package rng

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/safetensors"
)

// TestMT19937 checks the engine against the published std::mt19937 value:
// the 10000th output for the default seed 5489 is 4123659995.
func TestMT19937(t *testing.T) {
	var m mt19937
	m.seed(5489)
	var v uint32
	for i := 0; i < 10000; i++ {
		v = m.uint32()
	}
	if v != 4123659995 {
		t.Fatalf("10000th output %d, want 4123659995", v)
	}
}

type randnCase struct {
	Name  string `json:"name"`
	Seed  uint64 `json:"seed"`
	Shape []int  `json:"shape"`
	Calls string `json:"calls"`
}

func openVectors(t *testing.T) ([]randnCase, *safetensors.File) {
	t.Helper()
	root, ok := testref.Root()
	if !ok {
		t.Skipf("reference vectors not found at %s", root)
	}
	dir := filepath.Join(root, "rng")
	raw, err := os.ReadFile(filepath.Join(dir, "randn.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Cases []randnCase `json:"cases"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("randn.json: %v", err)
	}
	f, err := safetensors.Open(filepath.Join(dir, "randn.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return doc.Cases, f
}

func want(t *testing.T, f *safetensors.File, name string) []float32 {
	t.Helper()
	st := f.Tensor(name)
	if st == nil {
		t.Fatalf("randn.safetensors has no %q", name)
	}
	return testref.Decode(t, st)
}

// bitsEqual compares bit patterns: the vectors must match exactly, signed
// zeros included.
func bitsEqual(t *testing.T, name string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d values, want %d", name, len(got), len(want))
		return
	}
	bad, first := 0, -1
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			if first < 0 {
				first = i
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d values differ; first [%d] = %.9g, want %.9g", name, bad, len(got), first, got[first], want[first])
	}
}

func shapeName(shape []int) string {
	s := ""
	for i, d := range shape {
		if i > 0 {
			s += "x"
		}
		s += fmt.Sprint(d)
	}
	return s
}

func TestRandnVectors(t *testing.T) {
	cases, f := openVectors(t)
	n := 0
	for _, c := range cases {
		switch c.Calls {
		case "one torch.randn(shape, generator=torch.Generator('cpu').manual_seed(seed))":
			g := NewTorchCPU(c.Seed)
			bitsEqual(t, c.Name, g.Randn(c.Shape...), want(t, f, c.Name))
		case "two consecutive torch.randn calls on one generator":
			// "seq.seed7.a/b": tensors seq.seed7.a.<shape>, seq.seed7.b.<shape>.
			g := NewTorchCPU(c.Seed)
			base := c.Name[:len(c.Name)-len("a/b")]
			for _, part := range []string{"a", "b"} {
				name := base + part + "." + shapeName(c.Shape)
				bitsEqual(t, name, g.Randn(c.Shape...), want(t, f, name))
			}
		default:
			t.Fatalf("%s: unknown call pattern %q", c.Name, c.Calls)
		}
		n++
	}
	if n == 0 {
		t.Fatal("randn.json lists no cases")
	}
}

// TestScalarCache: the short-tensor path caches the second Box-Muller value
// in the generator, so two one-element draws equal one two-element draw,
// and Seed drops the cache.
func TestScalarCache(t *testing.T) {
	two := NewTorchCPU(3).Randn(2)
	g := NewTorchCPU(3)
	a, b := g.Randn(1), g.Randn(1)
	bitsEqual(t, "randn(1) twice", []float32{a[0], b[0]}, two)

	g = NewTorchCPU(3)
	g.Randn(1) // leaves a cached value
	g.Seed(3)
	bitsEqual(t, "after reseed", g.Randn(2), two)
}

func TestRandnShapes(t *testing.T) {
	g := NewTorchCPU(0)
	if v := g.Randn(2, -1); v != nil {
		t.Errorf("Randn(2, -1) = %d values, want nil", len(v))
	}
	if v := g.Randn(); len(v) != 1 {
		t.Errorf("Randn() = %d values, want 1 (a scalar)", len(v))
	}
	if v := g.Randn(3, 0, 5); len(v) != 0 {
		t.Errorf("Randn(3, 0, 5) = %d values, want 0", len(v))
	}
}

func BenchmarkRandn1x4x64x64(b *testing.B) {
	g := NewTorchCPU(0)
	for b.Loop() {
		g.Randn(1, 4, 64, 64)
	}
}

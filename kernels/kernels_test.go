package kernels

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestParamSizes(t *testing.T) {
	if len(paramSizes) != len(All) || len(All) != len(Variants) {
		t.Fatalf("%d size entries, %d kernels, %d variants: regenerate with go run ./kernels/gen", len(paramSizes), len(All), len(Variants))
	}
	for _, p := range paramSizes {
		if int(p.size) != p.k.PushSize {
			t.Errorf("%s: Go struct %s is %d bytes, SPIR-V push block %d", p.k.Name, p.k.Params, p.size, p.k.PushSize)
		}
		if p.k.PushSize > 128 {
			t.Errorf("%s: push block of %d bytes exceeds 128", p.k.Name, p.k.PushSize)
		}
		if p.k.Bindings < 1 || len(p.k.SPIRV) == 0 {
			t.Errorf("%s: %d bindings, %d bytes of SPIR-V", p.k.Name, p.k.Bindings, len(p.k.SPIRV))
		}
	}
}

// TestSPIRVUpToDate recompiles every variant and fails when a committed
// .spv differs from what its GLSL compiles to now.
func TestSPIRVUpToDate(t *testing.T) {
	glslc, err := exec.LookPath("glslc")
	if err != nil {
		t.Skip("glslc not found: cannot check that spv/*.spv match glsl/ (install the glslc package)")
	}
	tmp := t.TempDir()
	for i, v := range Variants {
		out := filepath.Join(tmp, v.Name+".spv")
		if msg, err := exec.Command(glslc, v.GlslcArgs("glsl", out)...).CombinedOutput(); err != nil {
			t.Errorf("glslc %s: %v\n%s", v.Name, err, msg)
			continue
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(filepath.Join("spv", v.Name+".spv"))
		if err != nil {
			t.Errorf("%s: %v (run go run ./kernels/gen)", v.Name, err)
			continue
		}
		if !bytes.Equal(got, committed) {
			t.Errorf("spv/%s.spv is stale: run go run ./kernels/gen", v.Name)
		}
		if i < len(All) && !bytes.Equal(All[i].SPIRV, committed) {
			t.Errorf("%s: embedded SPIR-V differs from spv/%s.spv", All[i].Name, v.Name)
		}
	}
}

// Command gen compiles every kernel variant in kernels.Variants with glslc
// into kernels/spv/<name>.spv and writes kernels/zz_kernels.go (embedded
// SPIR-V, typed Kernel values, push-constant structs) and
// kernels/zz_params_test.go (the struct-size check table).
//
// Run it from the repository root: go run ./kernels/gen
package main

import (
	"bytes"
	"flag"
	"fmt"
	"go/format"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/zimage/zimage/kernels"
)

func main() {
	dir := flag.String("dir", "kernels", "the kernels directory (holding glsl/ and spv/)")
	glslc := flag.String("glslc", "glslc", "the glslc binary")
	flag.Parse()
	if err := run(*dir, *glslc); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

// pushBlock is a GLSL push_constant block: its type name and members.
type pushBlock struct {
	Name    string
	Members [][2]string // GLSL type, GLSL name
}

type built struct {
	v     kernels.Variant
	info  spirvInfo
	block pushBlock
}

func run(dir, glslc string) error {
	glslDir := filepath.Join(dir, "glsl")
	spvDir := filepath.Join(dir, "spv")
	if err := os.MkdirAll(spvDir, 0o755); err != nil {
		return err
	}
	want := map[string]bool{}
	var all []built
	blocks := map[string]pushBlock{}
	for _, v := range kernels.Variants {
		if want[v.Name] {
			return fmt.Errorf("variant %q listed twice", v.Name)
		}
		want[v.Name] = true
		out := filepath.Join(spvDir, v.Name+".spv")
		cmd := exec.Command(glslc, v.GlslcArgs(glslDir, out)...)
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("glslc %s: %v\n%s", v.Name, err, msg)
		}
		code, err := os.ReadFile(out)
		if err != nil {
			return err
		}
		info, err := parseSPIRV(code)
		if err != nil {
			return fmt.Errorf("%s: %w", v.Name, err)
		}
		block, err := readPushBlock(glslDir, v.Source)
		if err != nil {
			return fmt.Errorf("%s: %w", v.Name, err)
		}
		if got := 4 * len(block.Members); got != info.PushSize {
			return fmt.Errorf("%s: push block %s has %d bytes of members but the SPIR-V block is %d bytes", v.Name, block.Name, got, info.PushSize)
		}
		if info.PushSize > 128 {
			return fmt.Errorf("%s: push block of %d bytes exceeds the 128 bytes Vulkan guarantees", v.Name, info.PushSize)
		}
		if prev, ok := blocks[block.Name]; ok && fmt.Sprint(prev) != fmt.Sprint(block) {
			return fmt.Errorf("%s: push block %s differs from another source's block of that name", v.Name, block.Name)
		}
		blocks[block.Name] = block
		all = append(all, built{v, info, block})
	}
	// Remove .spv files of variants that no longer exist.
	old, _ := filepath.Glob(filepath.Join(spvDir, "*.spv"))
	for _, f := range old {
		if !want[strings.TrimSuffix(filepath.Base(f), ".spv")] {
			if err := os.Remove(f); err != nil {
				return err
			}
		}
	}
	src, err := format.Source(genKernels(all, blocks))
	if err != nil {
		return fmt.Errorf("formatting zz_kernels.go: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "zz_kernels.go"), src, 0o644); err != nil {
		return err
	}
	test, err := format.Source(genParamsTest(all))
	if err != nil {
		return fmt.Errorf("formatting zz_params_test.go: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, "zz_params_test.go"), test, 0o644)
}

var (
	includeRE = regexp.MustCompile(`(?m)^#include "([^"]+)"`)
	pushRE    = regexp.MustCompile(`layout\s*\(\s*push_constant\s*\)\s*uniform\s+(\w+)\s*\{([^}]*)\}`)
	memberRE  = regexp.MustCompile(`^\s*(uint|int|float)\s+(\w+)\s*;`)
)

// readPushBlock finds the push_constant block in a source or its includes.
func readPushBlock(glslDir, file string) (pushBlock, error) {
	text, err := os.ReadFile(filepath.Join(glslDir, file))
	if err != nil {
		return pushBlock{}, err
	}
	full := string(text)
	for _, m := range includeRE.FindAllStringSubmatch(full, -1) {
		inc, err := os.ReadFile(filepath.Join(glslDir, m[1]))
		if err != nil {
			return pushBlock{}, fmt.Errorf("%s includes %s: %w", file, m[1], err)
		}
		full += "\n" + string(inc)
	}
	ms := pushRE.FindAllStringSubmatch(full, -1)
	if len(ms) != 1 {
		return pushBlock{}, fmt.Errorf("%s: want exactly one push_constant block, found %d", file, len(ms))
	}
	b := pushBlock{Name: ms[0][1]}
	for _, line := range strings.Split(ms[0][2], "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "//") {
			continue
		}
		mm := memberRE.FindStringSubmatch(line)
		if mm == nil {
			return pushBlock{}, fmt.Errorf("%s: push member %q is not a uint, int or float scalar", file, line)
		}
		b.Members = append(b.Members, [2]string{mm[1], mm[2]})
	}
	return b, nil
}

// goName turns a snake_case GLSL name into an exported Go name, keeping the
// project's initialisms.
func goName(s string) string {
	special := map[string]string{"matmul": "MatMul", "geglu": "GEGLU", "swiglu": "SwiGLU", "rms": "RMS", "f16": "F16", "f32": "F32", "qkv": "QKV"}
	var b strings.Builder
	for _, part := range strings.Split(strings.Trim(s, "_"), "_") {
		if part == "" {
			continue
		}
		if sp, ok := special[part]; ok {
			b.WriteString(sp)
			continue
		}
		b.WriteString(strings.ToUpper(part[:1]) + part[1:])
	}
	return b.String()
}

func goType(glsl string) string {
	switch glsl {
	case "int":
		return "int32"
	case "float":
		return "float32"
	}
	return "uint32"
}

func genKernels(all []built, blocks map[string]pushBlock) []byte {
	var b bytes.Buffer
	b.WriteString("// Code generated by go run ./kernels/gen; DO NOT EDIT.\n\npackage kernels\n\nimport _ \"embed\"\n\n")
	for _, k := range all {
		name := goName(k.v.Name)
		fmt.Fprintf(&b, "//go:embed spv/%s.spv\nvar spv%s []byte\n\n", k.v.Name, name)
		defs := ""
		if len(k.v.Defines) > 0 {
			defs = " with " + strings.Join(k.v.Defines, ", ")
		}
		fmt.Fprintf(&b, "// %s is glsl/%s%s.\n", name, k.v.Source, defs)
		scalar := slices.Contains(k.v.Defines, kernels.ScalarTexelsDefine)
		quad := slices.Contains(k.v.Defines, kernels.QuadTexelsDefine)
		fmt.Fprintf(&b, "var %s = &Kernel{Name: %q, SPIRV: spv%s, Bindings: %d, Texels: %#x, ScalarTexels: %v, QuadTexels: %v, PushSize: %d, Params: %q, SpecIDs: %d}\n\n",
			name, k.v.Name, name, k.info.Bindings, k.info.Texels, scalar, quad, k.info.PushSize, k.block.Name, k.info.SpecIDs)
	}
	b.WriteString("// All lists every kernel, in the order of Variants.\nvar All = []*Kernel{\n")
	for _, k := range all {
		fmt.Fprintf(&b, "\t%s,\n", goName(k.v.Name))
	}
	b.WriteString("}\n\n")
	names := make([]string, 0, len(blocks))
	for n := range blocks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		blk := blocks[n]
		fmt.Fprintf(&b, "// %s is the push_constant block %s (std430: 4-byte members, no padding).\ntype %s struct {\n", n, n, n)
		for _, m := range blk.Members {
			fmt.Fprintf(&b, "\t%s %s\n", goName(m[1]), goType(m[0]))
		}
		b.WriteString("}\n\n")
	}
	return b.Bytes()
}

func genParamsTest(all []built) []byte {
	var b bytes.Buffer
	b.WriteString("// Code generated by go run ./kernels/gen; DO NOT EDIT.\n\npackage kernels\n\nimport \"unsafe\"\n\n")
	b.WriteString("// paramSizes pairs each kernel with the Go size of its push-constant struct.\nvar paramSizes = []struct {\n\tk    *Kernel\n\tsize uintptr\n}{\n")
	for _, k := range all {
		fmt.Fprintf(&b, "\t{%s, unsafe.Sizeof(%s{})},\n", goName(k.v.Name), k.block.Name)
	}
	b.WriteString("}\n")
	return b.Bytes()
}

package lora

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
)

// TestPromptTagsReference: every reference run's A1111 prompt strips to
// the prompt the pipeline encoded, its tags give the run's LoRAs and
// multipliers, the names resolve in loras/, and the "Lora hashes" value
// is A1111's.
func TestPromptTagsReference(t *testing.T) {
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			r := testref.OpenLoRA(t, name)
			dir, err := OpenDir(filepath.Join(r.Dir, "loras"))
			require.NoError(t, err)
			for _, rn := range r.Runs {
				stripped, tags, other, err := ParsePrompt(rn.PromptA1111)
				require.NoError(t, err, rn.ID)
				assert.Equal(t, rn.PromptEncoded, stripped, rn.ID)
				assert.Empty(t, other, rn.ID)
				require.Len(t, tags, len(rn.LoRAs), rn.ID)
				var named []Named
				for i, tg := range tags {
					l := rn.LoRAs[i]
					assert.Equal(t, l.Tag, tg.Text, rn.ID)
					assert.Equal(t, l.Name, tg.Name, rn.ID)
					assert.Equal(t, l.TE, tg.TE, rn.ID)
					assert.Equal(t, l.UNet, tg.UNet, rn.ID)
					p, err := dir.Find(tg.Name)
					require.NoError(t, err)
					assert.Equal(t, filepath.Join(r.Dir, l.File), p)
					f := openLoRA(t, r.Dir, l.File)
					h, err := f.Hash()
					require.NoError(t, err)
					named = append(named, Named{Name: tg.Name, ShortHash: ShortHash(h)})
				}
				assert.Equal(t, rn.Hashes, HashesInfotext(named), rn.ID)
				if rn.CLI != nil {
					checkCLI(t, r.Dir, *rn.CLI, rn)
				}
			}
			// The addnet hash is what sshs_model_hash records, and what
			// files without it get.
			for lname, facts := range r.LoRAs {
				h, err := AddnetHash(filepath.Join(r.Dir, facts.File))
				require.NoError(t, err)
				assert.Equal(t, facts.AddnetHash, h, lname)
				f := openLoRA(t, r.Dir, facts.File)
				full, err := f.Hash()
				require.NoError(t, err)
				assert.Equal(t, facts.ShortHash, ShortHash(full), lname)
			}
		})
	}
}

// checkCLI reads a run's --lora flags.
func checkCLI(t *testing.T, dir, cli string, rn testref.LoRARun) {
	t.Helper()
	var args []string
	for _, f := range strings.Fields(cli) {
		if f != "--lora" {
			args = append(args, f)
		}
	}
	require.Len(t, args, len(rn.LoRAs), cli)
	for i, a := range args {
		p, m, err := ParseFlag(a)
		require.NoError(t, err)
		assert.Equal(t, rn.LoRAs[i].File, p, cli)
		assert.Equal(t, rn.LoRAs[i].UNet, m, cli)
	}
}

// TestParsePrompt covers A1111's rules beyond the reference runs.
func TestParsePrompt(t *testing.T) {
	cases := []struct {
		in, out  string
		names    []string
		te, unet []float64
		other    int
	}{
		{"a <lora:x> b", "a  b", []string{"x"}, []float64{1}, []float64{1}, 0},
		{"<lora:x:0.5:2>", "", []string{"x"}, []float64{0.5}, []float64{2}, 0},
		{"<lora:x:te=0.3>", "", []string{"x"}, []float64{0.3}, []float64{0.3}, 0},
		{"<lora:x:0.8:unet=0.1>", "", []string{"x"}, []float64{0.8}, []float64{0.1}, 0},
		{"<lora:x:unet=0.1:0.8>", "", []string{"x"}, []float64{0.8}, []float64{0.1}, 0},
		{"<lora:my lora: 1_0 >", "", []string{"my lora"}, []float64{10}, []float64{10}, 0},
		{"<lyco:x:0.5>,<hypernet:h:1>, <lora:é_2:1>", ",, ", []string{"x", "é_2"}, []float64{0.5, 1}, []float64{0.5, 1}, 1},
		{"no tags <lora> <:x:1> <lora:>", "no tags <lora> <:x:1> <lora:>", nil, nil, nil, 0},
		{"<lora:a:1>>", ">", []string{"a"}, []float64{1}, []float64{1}, 0},
	}
	for _, c := range cases {
		out, tags, other, err := ParsePrompt(c.in)
		require.NoError(t, err, c.in)
		assert.Equal(t, c.out, out, c.in)
		assert.Len(t, other, c.other, c.in)
		require.Len(t, tags, len(c.names), c.in)
		for i, tg := range tags {
			assert.Equal(t, c.names[i], tg.Name, c.in)
			assert.Equal(t, c.te[i], tg.TE, c.in)
			assert.Equal(t, c.unet[i], tg.UNet, c.in)
		}
	}
	for _, bad := range []string{"<lora:x:abc>", "<lora:te=1>", "<lora:x:1:nan>", "<lora:x:0x1p-2>"} {
		_, _, _, err := ParsePrompt(bad)
		var te *TagError
		assert.True(t, errors.As(err, &te), "%s: %v", bad, err)
	}
}

func TestParseFlag(t *testing.T) {
	for _, c := range []struct {
		in   string
		path string
		mult float64
	}{
		{"a.safetensors", "a.safetensors", 1},
		{"dir/a.safetensors:0.7", "dir/a.safetensors", 0.7},
		{`C:\loras\a.safetensors`, `C:\loras\a.safetensors`, 1},
		{`C:\loras\a.safetensors:-1`, `C:\loras\a.safetensors`, -1},
	} {
		p, m, err := ParseFlag(c.in)
		require.NoError(t, err)
		assert.Equal(t, c.path, p)
		assert.Equal(t, c.mult, m)
	}
	_, _, err := ParseFlag("")
	assert.Error(t, err)
}

// TestDirFind: names, ss_output_name aliases, subfolders, unknown names.
func TestDirFind(t *testing.T) {
	r := testref.OpenLoRA(t, "tiny-sd15")
	tmp := t.TempDir()
	sub := filepath.Join(tmp, "styles")
	require.NoError(t, os.MkdirAll(sub, 0o755))
	raw, err := os.ReadFile(filepath.Join(r.Dir, "loras", "style_a.safetensors"))
	require.NoError(t, err)
	// A renamed copy is found by its file name and by its ss_output_name.
	require.NoError(t, os.WriteFile(filepath.Join(sub, "renamed.safetensors"), raw, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(tmp, "old.ckpt"), []byte("PK\x03\x04"), 0o644))
	d, err := OpenDir(tmp)
	require.NoError(t, err)
	assert.Equal(t, []string{"old", "renamed"}, d.Names())
	for _, n := range []string{"renamed", "style_a"} {
		p, err := d.Find(n)
		require.NoError(t, err, n)
		assert.Equal(t, filepath.Join(sub, "renamed.safetensors"), p)
	}
	_, err = d.Find("nope")
	var ue *UnknownLoRAError
	require.ErrorAs(t, err, &ue)
	assert.Equal(t, "nope", ue.Name)
	assert.Contains(t, err.Error(), tmp)
	// A pickle is found by name and refused when opened, naming the file.
	p, err := d.Find("old")
	require.NoError(t, err)
	_, err = Open(p)
	var pe *PickleError
	require.ErrorAs(t, err, &pe)
	assert.Contains(t, err.Error(), "old.ckpt")

	var none *Dir
	_, err = none.Find("x")
	require.ErrorAs(t, err, &ue)
}

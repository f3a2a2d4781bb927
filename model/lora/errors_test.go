package lora

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/safetensors"
)

// editedCopy writes tiny-sd15's style_a.safetensors to a temporary file
// after edit has changed its tensors (F16, so Data is 2 bytes an element).
func editedCopy(t *testing.T, dir string, edit func(ts []safetensors.WriteTensor) []safetensors.WriteTensor) string {
	t.Helper()
	st, err := safetensors.Open(filepath.Join(dir, "loras", "style_a.safetensors"))
	require.NoError(t, err)
	defer st.Close()
	var ts []safetensors.WriteTensor
	for _, x := range st.Tensors() {
		w, err := x.ToWrite()
		require.NoError(t, err)
		w.Data = append([]byte(nil), w.Data...)
		ts = append(ts, w)
	}
	p := filepath.Join(t.TempDir(), "edited.safetensors")
	require.NoError(t, safetensors.WriteFile(p, edit(ts), st.Metadata))
	return p
}

func without(ts []safetensors.WriteTensor, name string) []safetensors.WriteTensor {
	var out []safetensors.WriteTensor
	for _, x := range ts {
		if x.Name != name {
			out = append(out, x)
		}
	}
	return out
}

func find(ts []safetensors.WriteTensor, name string) *safetensors.WriteTensor {
	for i := range ts {
		if ts[i].Name == name {
			return &ts[i]
		}
	}
	return nil
}

// f16Rand is an F16 tensor of small values.
func f16Tensor(name string, shape ...int) safetensors.WriteTensor {
	n := 1
	for _, d := range shape {
		n *= d
	}
	b := make([]byte, 2*n)
	for i := range n {
		binary.LittleEndian.PutUint16(b[2*i:], model.F16Bits(float32(i%7)*0.01))
	}
	return safetensors.WriteTensor{Name: name, DType: safetensors.F16, Shape: shape, Data: b}
}

const toQ = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"

// TestBadFiles: each kind of bad input gives its named error, naming the
// file and the tensor or module.
func TestBadFiles(t *testing.T) {
	r := testref.OpenLoRA(t, "tiny-sd15")
	m := loadSD(t, r.Dir)

	t.Run("missing up", func(t *testing.T) {
		p := editedCopy(t, r.Dir, func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			return without(ts, toQ+".lora_up.weight")
		})
		_, err := Open(p)
		var e *MissingPartError
		require.ErrorAs(t, err, &e)
		assert.Equal(t, toQ, e.Module)
		assert.Equal(t, "lora_up", e.Missing)
		assert.Contains(t, err.Error(), p)
	})
	t.Run("missing down", func(t *testing.T) {
		p := editedCopy(t, r.Dir, func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			return without(ts, toQ+".lora_down.weight")
		})
		_, err := Open(p)
		var e *MissingPartError
		require.ErrorAs(t, err, &e)
		assert.Equal(t, "lora_down", e.Missing)
	})
	t.Run("NaN", func(t *testing.T) {
		p := editedCopy(t, r.Dir, func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			d := find(ts, toQ+".lora_down.weight")
			binary.LittleEndian.PutUint16(d.Data[6:], 0x7e00) // element 3: NaN
			return ts
		})
		_, err := Open(p)
		var e *model.NonFiniteError
		require.ErrorAs(t, err, &e)
		assert.Equal(t, toQ+".lora_down.weight", e.Key)
		assert.Equal(t, 3, e.Index)
		assert.Equal(t, p, e.File)
	})
	t.Run("Inf alpha", func(t *testing.T) {
		p := editedCopy(t, r.Dir, func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			binary.LittleEndian.PutUint16(find(ts, toQ+".alpha").Data, 0x7c00)
			return ts
		})
		_, err := Open(p)
		var e *model.NonFiniteError
		require.ErrorAs(t, err, &e)
		assert.Equal(t, toQ+".alpha", e.Key)
	})
	t.Run("rank mismatch", func(t *testing.T) {
		p := editedCopy(t, r.Dir, func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			*find(ts, toQ+".lora_up.weight") = f16Tensor(toQ+".lora_up.weight", 32, 5)
			return ts
		})
		_, err := Open(p)
		var e *ShapeError
		require.ErrorAs(t, err, &e)
		assert.Equal(t, toQ+".lora_up.weight", e.Tensor)
	})
	t.Run("shape does not fit the model", func(t *testing.T) {
		p := editedCopy(t, r.Dir, func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			*find(ts, toQ+".lora_down.weight") = f16Tensor(toQ+".lora_down.weight", 4, 48)
			return ts
		})
		f, err := Open(p)
		require.NoError(t, err, "the file itself is consistent")
		defer f.Close()
		_, err = m.target.Resolve(f, true)
		var e *ShapeError
		require.ErrorAs(t, err, &e)
		assert.Equal(t, toQ+".lora_down.weight", e.Tensor)
		assert.Contains(t, e.Module, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
		assert.Equal(t, []int{4, 48}, e.Got)
	})
	t.Run("3x3 lora_down on a linear", func(t *testing.T) {
		p := editedCopy(t, r.Dir, func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			*find(ts, toQ+".lora_down.weight") = f16Tensor(toQ+".lora_down.weight", 4, 32, 3, 3)
			return ts
		})
		f, err := Open(p)
		require.NoError(t, err)
		defer f.Close()
		_, err = m.target.Resolve(f, false)
		var e *ShapeError
		require.ErrorAs(t, err, &e)
	})
	t.Run("unknown module", func(t *testing.T) {
		p := editedCopy(t, r.Dir, func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			return append(ts, f16Tensor("lora_unet_down_blocks_9_foo.lora_down.weight", 4, 32),
				f16Tensor("lora_unet_down_blocks_9_foo.lora_up.weight", 32, 4))
		})
		f, err := Open(p)
		require.NoError(t, err)
		defer f.Close()
		_, err = m.target.Resolve(f, false)
		var e *UnknownModuleError
		require.ErrorAs(t, err, &e)
		assert.Equal(t, []string{"lora_unet_down_blocks_9_foo"}, e.Keys)
		assert.Contains(t, err.Error(), "ignore-unknown")
		res, err := m.target.Resolve(f, true)
		require.NoError(t, err)
		assert.Equal(t, []string{"lora_unet_down_blocks_9_foo"}, res.Skipped)
		assert.Len(t, res.Bindings, 90)
	})
	t.Run("LoRA for another architecture", func(t *testing.T) {
		xl := testref.Dir(t, "tiny-sdxl-turbo")
		for _, name := range []string{"style_a", "pytorch_lora_weights"} {
			f := openLoRA(t, xl, "loras/"+name+".safetensors")
			_, err := m.target.Resolve(f, false)
			var e *UnknownModuleError
			require.ErrorAs(t, err, &e, name)
			t.Log(err)
		}
	})
	t.Run("LoHa", func(t *testing.T) {
		p := editedCopy(t, r.Dir, func(ts []safetensors.WriteTensor) []safetensors.WriteTensor {
			return append(ts, f16Tensor("lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a", 32, 4))
		})
		_, err := Open(p)
		var e *UnsupportedError
		require.ErrorAs(t, err, &e)
		assert.Equal(t, "LyCORIS LoHa", e.Kind)
	})
	t.Run("pickle", func(t *testing.T) {
		dir := t.TempDir()
		for name, data := range map[string][]byte{
			"a.pt":          []byte("PK\x03\x04rest"),
			"b.ckpt":        {0x80, 0x02, 'c'},
			"c.safetensors": []byte("PK\x03\x04 a zip under another name"),
			"d.safetensors": {0x80, 0x04, 0x95},
		} {
			p := filepath.Join(dir, name)
			require.NoError(t, os.WriteFile(p, data, 0o644))
			_, err := Open(p)
			var e *PickleError
			require.ErrorAs(t, err, &e, name)
			assert.True(t, strings.Contains(err.Error(), name), err.Error())
		}
	})
	t.Run("not a LoRA", func(t *testing.T) {
		p := filepath.Join(r.Dir, "unet", "diffusion_pytorch_model.safetensors")
		if _, err := os.Stat(p); err != nil {
			p = filepath.Join(r.Dir, "unet", "diffusion_pytorch_model.fp16.safetensors")
		}
		_, err := Open(p)
		var e *NotLoRAError
		require.ErrorAs(t, err, &e)
		st, err := safetensors.Open(p)
		require.NoError(t, err)
		defer st.Close()
		assert.False(t, IsLoRA(st.Names()))
	})
	t.Run("apply failure leaves nothing applied", func(t *testing.T) {
		// A spec without a file fails before touching anything; a failing
		// backend (a tiny budget) fails midway and is undone.
		b := ref.New(ref.WithBudget(64 << 10))
		a := NewApplier(b, m.target, Options{})
		require.Error(t, a.Apply([]Spec{{}}, Modes{}))
		f := openLoRA(t, r.Dir, "loras/locon_c.safetensors")
		err := a.Apply([]Spec{{File: f, TE: 1, UNet: 1}}, Modes{Default: InForward})
		require.Error(t, err)
		assert.Equal(t, Stats{}, a.Stats())
		for _, mod := range m.unet.Modules() {
			require.Nil(t, mod.LoRA(), mod.Path)
		}
		m.evictAll(b)
		assert.Zero(t, b.MemStats().InUse)
	})
}

// TestPEFTAdapterMetadata: diffusers' lora_adapter_metadata sets the alpha
// of PEFT modules (lora_alpha, alpha_pattern, use_rslora).
func TestPEFTAdapterMetadata(t *testing.T) {
	const q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
	const k = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
	ts := []safetensors.WriteTensor{
		f16Tensor(q+".lora_A.weight", 4, 32), f16Tensor(q+".lora_B.weight", 32, 4),
		f16Tensor(k+".lora_A.weight", 4, 32), f16Tensor(k+".lora_B.weight", 32, 4),
		f16Tensor("text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight", 4, 32),
		f16Tensor("text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight", 128, 4),
	}
	for _, c := range []struct {
		md       string
		q, k, te float64
	}{
		{`{"unet.lora_alpha": 8, "unet.r": 4}`, 2, 2, 1},
		{`{"unet.lora_alpha": 8, "unet.alpha_pattern": {"attn2.to_k": 2, "down_blocks.1.*": 5}, "text_encoder.lora_alpha": 1}`, 2, 0.5, 0.25},
		{`{"unet.lora_alpha": 8, "unet.use_rslora": true}`, 4, 4, 1},
	} {
		p := filepath.Join(t.TempDir(), "peft.safetensors")
		require.NoError(t, safetensors.WriteFile(p, ts, map[string]string{"format": "pt", "lora_adapter_metadata": c.md}))
		f, err := Open(p)
		require.NoError(t, err, c.md)
		got := map[string]float64{}
		for _, m := range f.Modules {
			got[m.Key] = m.Scale()
		}
		f.Close()
		assert.Equal(t, c.q, got[q], c.md)
		assert.Equal(t, c.k, got[k], c.md)
		assert.Equal(t, c.te, got["text_encoder.text_model.encoder.layers.0.mlp.fc1"], c.md)
	}
	p := filepath.Join(t.TempDir(), "bad.safetensors")
	require.NoError(t, safetensors.WriteFile(p, ts, map[string]string{"lora_adapter_metadata": "{not json"}))
	_, err := Open(p)
	assert.ErrorContains(t, err, "lora_adapter_metadata")
}

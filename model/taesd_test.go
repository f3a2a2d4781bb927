package model

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model/safetensors"
)

func openTestTAESD(t testing.TB, model string) *TAESD {
	t.Helper()
	m, err := OpenTAESD(filepath.Join(testref.Dir(t, model), "taesd"))
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m
}

// taesdCases lists refs_img2img.json taesd.<list>[*].<key>.
func taesdCases(r *testref.Refs, list, key string) []string {
	var out []string
	sec, _ := r.JSON["taesd"].(map[string]any)
	cases, _ := sec[list].([]any)
	for _, c := range cases {
		m, _ := c.(map[string]any)
		id, _ := m[key].(string)
		out = append(out, id)
	}
	return out
}

// checkTAESD runs every TAESD reference on m: decodes of the vae cases and
// of the txt2img run's final latents (float and 8-bit images), and encodes
// of the reference inputs with their round trip.
func checkTAESD(t *testing.T, m *TAESD, r *testref.Refs, b engine.Backend, res Residency) {
	rec := engine.NewRec(b)
	decode := func(in, image, u8 string) {
		lat, shape := r.Floats(t, in)
		z := rec.Write(in, lat, shape...)
		img := m.Decode(rec, res, z)
		require.NoError(t, rec.Err())
		checkClose(t, b, img, r, image, 0)
		checkUint8(t, b, img, r, u8)
		rec.Free(z, img)
	}
	dec := taesdCases(r, "decoder_cases", "id")
	require.NotEmpty(t, dec)
	for _, id := range dec {
		p := "taesd.dec." + id + "."
		decode(p+"latent", p+"image", p+"uint8")
	}
	for _, id := range taesdCases(r, "txt2img", "id") {
		p := "taesd.t2i." + id + "."
		decode(p+"vae_input", p+"image", p+"uint8")
	}
	enc := taesdCases(r, "encoder_cases", "image")
	require.NotEmpty(t, enc)
	for _, in := range enc {
		px, shape := r.Floats(t, "enc."+in+".pixels")
		x := rec.Write("pixels", px, shape...)
		lat := m.Encode(rec, res, x)
		require.NoError(t, rec.Err())
		checkClose(t, b, lat, r, "taesd.enc."+in+".latents", 0)
		img := m.Decode(rec, res, lat)
		require.NoError(t, rec.Err())
		checkClose(t, b, img, r, "taesd.enc."+in+".decoded", 0)
		rec.Free(x, lat, img)
	}
}

// TestTAESD checks the diffusers-folder TAESDs of every test model (the SD
// one shared by two, SDXL's own) against diffusers on every backend.
func TestTAESD(t *testing.T) {
	for _, model := range testref.Models {
		t.Run(model, func(t *testing.T) {
			r := testref.OpenSet(t, model, "refs_img2img")
			m := openTestTAESD(t, model)
			require.NotNil(t, m.Encoder)
			require.NotNil(t, m.Decoder)
			require.Equal(t, 8, m.Scale())
			forEachBackend(t, func(t *testing.T, b engine.Backend, res Residency) {
				checkTAESD(t, m, r, b, res)
			})
		})
	}
}

// writeTAESDPy writes the folder weights of a test model's TAESD as the
// two files madebyollin/taesd publishes (taesd.py's Sequential keys: no
// prefix, the decoder's layers numbered one higher for its Clamp).
func writeTAESDPy(t *testing.T, model, dir, prefix string) {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(testref.Dir(t, model), "taesd", "diffusion_pytorch_model.safetensors"))
	require.NoError(t, err)
	defer f.Close()
	var enc, dec []safetensors.WriteTensor
	for _, name := range f.Names() {
		wt, err := f.Tensor(name).ToWrite()
		require.NoError(t, err)
		if rest, ok := strings.CutPrefix(name, "encoder.layers."); ok {
			wt.Name = rest
			enc = append(enc, wt)
		} else if rest, ok := strings.CutPrefix(name, "decoder.layers."); ok {
			i, tail, _ := strings.Cut(rest, ".")
			n, err := strconv.Atoi(i)
			require.NoError(t, err)
			wt.Name = strconv.Itoa(n+1) + "." + tail
			dec = append(dec, wt)
		} else {
			t.Fatalf("unexpected key %q", name)
		}
	}
	require.NoError(t, safetensors.WriteFile(filepath.Join(dir, prefix+"_encoder.safetensors"), enc, nil))
	require.NoError(t, safetensors.WriteFile(filepath.Join(dir, prefix+"_decoder.safetensors"), dec, nil))
}

// TestTAESDSingleFiles loads the taesd.py single-file layout: the decoder
// file alone (finding the encoder beside it), the encoder alone, and a
// decoder without an encoder next to it, and checks the results.
func TestTAESDSingleFiles(t *testing.T) {
	const model = "tiny-sdxl-turbo"
	r := testref.OpenSet(t, model, "refs_img2img")
	dir := t.TempDir()
	writeTAESDPy(t, model, dir, "taesdxl")
	b := ref.New()
	defer b.Close()

	m, err := OpenTAESD(filepath.Join(dir, "taesdxl_decoder.safetensors"))
	require.NoError(t, err)
	defer m.Close()
	require.NotNil(t, m.Encoder, "the encoder file beside the decoder's")
	require.Equal(t, 16, m.Config.DecoderBlockOutChannels[0])
	res := &evictingResidency{b: b}
	defer res.evictAll()
	checkTAESD(t, m, r, b, res)

	require.NoError(t, os.Rename(filepath.Join(dir, "taesdxl_encoder.safetensors"), filepath.Join(dir, "enc.safetensors")))
	d, err := OpenTAESD(filepath.Join(dir, "taesdxl_decoder.safetensors"))
	require.NoError(t, err)
	defer d.Close()
	require.Nil(t, d.Encoder)
	rec := engine.NewRec(b)
	x := rec.Write("x", make([]float32, 3*64*64), 1, 3, 64, 64)
	require.Nil(t, d.Encode(rec, AllResident{B: b}, x))
	require.ErrorContains(t, rec.Err(), "no encoder")

	e, err := OpenTAESD(filepath.Join(dir, "enc.safetensors"))
	require.NoError(t, err)
	defer e.Close()
	require.Nil(t, e.Decoder)
	require.Equal(t, 4, e.Config.LatentChannels)
	rec = engine.NewRec(b)
	lat := e.Encode(rec, AllResident{B: b}, x)
	require.NoError(t, rec.Err())
	require.Equal(t, engine.Shape{1, 4, 8, 8}, lat.Shape)

	// Not a TAESD: the full VAE's file.
	vae, _ := filepath.Glob(filepath.Join(testref.Dir(t, model), "vae", "*.safetensors"))
	require.Len(t, vae, 1)
	_, err = OpenTAESD(vae[0])
	require.Error(t, err)
	t.Log(err)
	_, err = OpenTAESD(filepath.Join(testref.Dir(t, model), "vae"))
	require.ErrorContains(t, err, "AutoencoderTiny")
}

// TestTAESDDecodeLimited decodes with a tensor limit that forces the
// split and tiny tiles, and checks the result equals the whole decode.
func TestTAESDDecodeLimited(t *testing.T) {
	m := openTestTAESD(t, "tiny-sd-turbo")
	forEachBackend(t, func(t *testing.T, b engine.Backend, res Residency) {
		rec := engine.NewRec(b)
		const h, w = 12, 20
		z := rec.Write("z", randLatents(9, 4*h*w), 1, 4, h, w)
		img := m.Decode(rec, res, z)
		require.NoError(t, rec.Err())
		whole, err := b.Read(img)
		require.NoError(t, err)
		full := m.MaxTensorBytes(1, h, w)
		require.Equal(t, int64(4*16*96*160), full)
		// full - 1 and a quarter of it (exactly the 4x-resolution maps)
		// split before the last upsample and tile the rest in 2 and 8
		// tiles; 1/20 leaves no room for a tile with its margins.
		for _, limit := range []int64{0, full, full - 1, full / 4} {
			split, _ := m.splitAt(1, h, w, limit)
			got := m.DecodeLimited(rec, res, z, limit)
			require.NoError(t, rec.Err(), "limit %d", limit)
			px, err := b.Read(got)
			require.NoError(t, err)
			require.Equal(t, img.Shape, got.Shape)
			d := testref.Compare(px, whole)
			t.Logf("limit %d bytes: split before layer %d of %d, max |diff| %.3g", limit, split, len(m.Decoder), d.MaxAbs)
			require.LessOrEqual(t, d.MaxAbs, 1e-5*(d.MaxRef+1), "limit %d", limit)
			rec.Free(got)
		}
		bad := engine.NewRec(b)
		require.Nil(t, m.DecodeLimited(bad, res, z, full/20))
		require.ErrorContains(t, bad.Err(), "no tile fits")
		rec.Free(z, img)
	})
}

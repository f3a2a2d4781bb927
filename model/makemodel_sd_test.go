package model

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWriteSDModelVAEHalves: a random-weight SD folder holds the VAE as
// users' files do, encoder and decoder, so img2img runs on it.
func TestWriteSDModelVAEHalves(t *testing.T) {
	for _, arch := range []string{"sd-turbo", "sdxl-turbo"} {
		dir := filepath.Join(t.TempDir(), arch)
		require.NoError(t, WriteSyntheticModel(dir, SyntheticSpec{Arch: arch, Seed: 1}))
		c := openTest(t, dir, OpenOptions{})
		_, err := LoadVAEEncoder(c.VAE.Source, c.VAE.Config)
		require.NoError(t, err, arch)
		_, err = LoadVAEDecoder(c.VAE.Source, c.VAE.Config)
		require.NoError(t, err, arch)
		assert.Empty(t, c.VAE.Source.Unused(), "%s: every VAE tensor belongs to a half", arch)
	}
}

package sched

import (
	"fmt"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/model/safetensors"
)

// Noise is explicit noise for a run, so that runs reproduce exactly across
// engines: the unscaled standard-normal initial latents and, for samplers
// that add noise, each step's draw.
type Noise struct {
	Path    string
	Latents []float32
	Shape   []int       // [B, C, h, w]
	Steps   [][]float32 // Steps[k] is the draw of step k
}

// LoadNoise reads a safetensors file with "latents" [B,C,h,w] and optional
// "noise.0", "noise.1", ... of the same shape.
func LoadNoise(path string) (*Noise, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sched: noise file: %w", err)
	}
	defer f.Close()
	lat := f.Tensor("latents")
	if lat == nil {
		return nil, fmt.Errorf("sched: noise file %s has no tensor \"latents\"", path)
	}
	if len(lat.Shape) != 4 {
		return nil, fmt.Errorf("sched: noise file %s: \"latents\" has shape %v, want [B, C, h, w]", path, lat.Shape)
	}
	n := &Noise{Path: path, Shape: append([]int(nil), lat.Shape...)}
	if n.Latents, err = decodeFloats(path, lat); err != nil {
		return nil, err
	}
	for k := 0; ; k++ {
		t := f.Tensor(fmt.Sprintf("noise.%d", k))
		if t == nil {
			break
		}
		if !engine.Shape(t.Shape).Equal(lat.Shape) {
			return nil, fmt.Errorf("sched: noise file %s: \"noise.%d\" has shape %v, want %v like \"latents\"", path, k, t.Shape, lat.Shape)
		}
		v, err := decodeFloats(path, t)
		if err != nil {
			return nil, err
		}
		n.Steps = append(n.Steps, v)
	}
	return n, nil
}

func (n *Noise) check(batch, c, h, w int) error {
	if !engine.Shape(n.Shape).Equal(engine.Shape{batch, c, h, w}) {
		return fmt.Errorf("sched: noise file %s: latents are %v, this run needs [%d %d %d %d] (batch, channels, height/8, width/8)",
			n.Path, n.Shape, batch, c, h, w)
	}
	return nil
}

func (n *Noise) step(k, size int) ([]float32, error) {
	if k >= len(n.Steps) {
		return nil, fmt.Errorf("sched: noise file %s has no \"noise.%d\", which step %d of this sampler needs", n.Path, k, k+1)
	}
	if len(n.Steps[k]) != size {
		return nil, fmt.Errorf("sched: noise file %s: \"noise.%d\" has %d values, want %d", n.Path, k, len(n.Steps[k]), size)
	}
	return append([]float32(nil), n.Steps[k]...), nil
}

func decodeFloats(path string, t *safetensors.Tensor) ([]float32, error) {
	v, err := safetensors.Float32s(t)
	if err != nil {
		return nil, fmt.Errorf("sched: noise file %s: %w", path, err)
	}
	return v, nil
}

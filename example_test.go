package zimage_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/model"
)

// Generate an image and save it with its A1111 metadata. The model here is
// a tiny random-weight one that zimage builds itself, so the picture is
// noise; point Load at an SD-Turbo folder or .safetensors file for a real
// one.
func Example() {
	dir, err := os.MkdirTemp("", "zimage-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	modelDir := filepath.Join(dir, "tiny-sd-turbo")
	if err := model.WriteSyntheticModel(modelDir, model.SyntheticSpec{Arch: "sd-turbo", Seed: 1}); err != nil {
		log.Fatal(err)
	}

	p, err := zimage.Load(modelDir)
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	res, err := p.Generate(context.Background(), zimage.Request{Prompt: "a lighthouse at dusk", Seed: 42})
	if err != nil {
		log.Fatal(err)
	}
	// Written through a temporary file renamed into place.
	if err := zimage.WritePNGFile(filepath.Join(dir, "lighthouse.png"), res.Images[0], res.Metadata); err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Images[0].Bounds().Size(), "seed", res.Seeds[0], "steps", res.Parameters.Steps)
	// Output: (64,64) seed 42 steps 1
}

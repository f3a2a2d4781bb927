package zimage

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"testing"
)

func TestParametersRoundTripThroughPNG(t *testing.T) {
	for _, p := range []Parameters{
		{Prompt: "a photo of an astronaut, riding a horse", NegativePrompt: "blurry, low quality", Steps: 4,
			Sampler: "Euler a", CFGScale: 7.5, Seed: 1234567890123, Width: 512, Height: 768,
			ModelHash: "1a2b3c4d", Model: "sd_turbo", Version: "zimage " + Version},
		{Prompt: "宇航员骑马 🐎\nsecond line", Steps: 1, Sampler: "Euler", CFGScale: 0, Seed: 0, Width: 64, Height: 64},
		{Prompt: "a fox <lora:style_a:0.7>, <lora:style_b:0.4>", Steps: 2, Sampler: "Euler a", CFGScale: 0, Seed: 7, Width: 64, Height: 64,
			ModelHash: "1a2b3c4d", Model: "tiny", LoRAHashes: "style_a: 49ee188e95c1, style_b: e7eb57d35424", Version: "zimage " + Version},
	} {
		img := image.NewRGBA(image.Rect(0, 0, 3, 2))
		img.Set(1, 1, color.RGBA{R: 200, G: 10, B: 30, A: 255})
		var buf bytes.Buffer
		if err := EncodePNG(&buf, img, p.String()); err != nil {
			t.Fatal(err)
		}
		// The file is still a valid PNG with the same pixels.
		back, err := png.Decode(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		r1, g1, b1, a1 := back.At(1, 1).RGBA()
		r2, g2, b2, a2 := img.At(1, 1).RGBA()
		if [4]uint32{r1, g1, b1, a1} != [4]uint32{r2, g2, b2, a2} {
			t.Fatalf("pixel changed: %v", back.At(1, 1))
		}
		text, err := ReadPNGText(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseParameters(text["parameters"])
		if err != nil {
			t.Fatalf("parse %q: %v", text["parameters"], err)
		}
		if got != p {
			t.Fatalf("round trip:\n got  %+v\n want %+v", got, p)
		}
	}
}

func TestParametersA1111Layout(t *testing.T) {
	p := Parameters{Prompt: "cat", NegativePrompt: "dog", Steps: 20, Sampler: "DPM++ 2M Karras", CFGScale: 7,
		Seed: 42, Width: 512, Height: 512, ModelHash: "abcdef12", Model: "v1-5", Version: "zimage 0.1.0"}
	want := "cat\nNegative prompt: dog\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: abcdef12, Model: v1-5, Version: zimage 0.1.0"
	if got := p.String(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

// TestParametersLoRAHashes: A1111 quotes the "Lora hashes" value (it holds
// commas and colons) and puts it before Version.
func TestParametersLoRAHashes(t *testing.T) {
	p := Parameters{Prompt: "cat <lora:style_a:1>", Steps: 1, Sampler: "Euler", CFGScale: 0, Seed: 1, Width: 64, Height: 64,
		LoRAHashes: "style_a: 49ee188e95c1", Version: "zimage 0.1.0"}
	want := "cat <lora:style_a:1>\nSteps: 1, Sampler: Euler, CFG scale: 0, Seed: 1, Size: 64x64, Lora hashes: \"style_a: 49ee188e95c1\", Version: zimage 0.1.0"
	if got := p.String(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

package server_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/server"
)

// TestBrowser drives the web UI in Debian's chromium, headless: type a
// prompt (Chinese and English), pick a preset, generate, check the shown
// parameters and the download link, switch tabs and language, read the
// saved PNG back through PNG info. It saves a screenshot of each tab
// under out/ (README shows one).
func TestBrowser(t *testing.T) {
	br := openBrowser(t, 1360, 940)
	ctx, do := br.ctx, br.do
	loras := filepath.Join(testref.Dir(t, "tiny-sd-turbo"), "loras")
	ts := startServer(t, server.Config{LoRADir: loras, Load: loraLoader(t, loras)}, nil)

	str := func(a chromedp.Action[string]) string {
		t.Helper()
		v, err := chromedp.Run(ctx, a)
		require.NoError(t, err)
		return v
	}
	poll := br.poll
	shot := br.shot
	const prompt = "a lighthouse at dusk, 黄昏时的灯塔"
	_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
		Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}})
	require.NoError(t, err)
	do(chromedp.Navigate(ts.URL + "/"))
	poll(`document.querySelector("#model-select").options.length > 0`)
	do(chromedp.SendKeys("#prompt", prompt),
		chromedp.SendKeys("#negative", "blurry"),
		chromedp.Click(`#presets button[data-preset="4:3"]`))
	// The LoRA picker lists --lora-dir and inserts A1111's tag; picking a
	// LoRA twice removes its tag again.
	poll(`!document.querySelector("#lora-row").hidden && document.querySelector("#lora-select").options.length === 5`)
	pick := func(name string) {
		t.Helper()
		_, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => { const s = document.querySelector("#lora-select");
			s.value = "`+name+`"; s.dispatchEvent(new Event("change")); return true })()`))
		require.NoError(t, err)
	}
	pick("style_b")
	assert.Equal(t, prompt+" <lora:style_b:1>", str(chromedp.Value("#prompt")))
	pick("style_b")
	assert.Equal(t, prompt, str(chromedp.Value("#prompt")))
	do(chromedp.SetValue("#lora-weight", "0.5"))
	pick("style_a")
	const tagged = prompt + " <lora:style_a:0.5>"
	assert.Equal(t, tagged, str(chromedp.Value("#prompt")))
	// 4:3 over the tiny model's 64-pixel base: 74x55 rounded to 8, the
	// short side held at the 64-pixel minimum (as generate --preset does).
	assert.Equal(t, "72", str(chromedp.Value("#width")))
	assert.Equal(t, "64", str(chromedp.Value("#height")))
	do(chromedp.SetValue("#steps", "2"), chromedp.SetValue("#seed", "1234"), chromedp.Click("#generate"),
		chromedp.WaitVisible("#result-image"))
	infotext := str(chromedp.Text("#infotext"))
	assert.Contains(t, infotext, prompt)
	assert.Contains(t, infotext, "Negative prompt: blurry")
	assert.Contains(t, infotext, "Steps: 2, Sampler: Euler, CFG scale: 0, Seed: 1234, Size: 72x64")
	assert.Contains(t, infotext, tagged)
	assert.Contains(t, infotext, `Lora hashes: "style_a: `)
	href, err := chromedp.Run(ctx, chromedp.AttributeValue("#download", "href"))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(href.Value, "data:image/png;base64,"), "download link %.40q", href.Value)
	dl, err := chromedp.Run(ctx, chromedp.AttributeValue("#download", "download"))
	require.NoError(t, err)
	assert.Equal(t, "zimage-1234.png", dl.Value)
	poll(`document.querySelectorAll("#gallery img").length > 0`)
	shot("webui-generate.png")

	do(chromedp.Click("#tabbtn-system"))
	poll(`document.querySelector("#sys-last").textContent.includes("72×64")`)
	assert.Contains(t, str(chromedp.Text("#sys-model")), "tiny-sd-turbo")
	shot("webui-system.png")
	do(chromedp.Click("#tabbtn-about"), chromedp.WaitVisible("#tab-about"))
	shot("webui-about.png")
	do(chromedp.Click("#lang-switch"))
	assert.Equal(t, "生成", str(chromedp.Text("#tabbtn-generate")))
	do(chromedp.Click("#tabbtn-generate"), chromedp.WaitVisible("#tab-generate"))
	shot("webui-generate-zh.png")

	// PNG info: the saved file's parameters come back into the form.
	saved, _ := filepath.Glob(filepath.Join(ts.out, "txt2img-images", "*", "*.png"))
	require.Len(t, saved, 1)
	abs, _ := filepath.Abs(saved[0])
	_, err = chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector("#prompt").value = ""; true`))
	require.NoError(t, err)
	do(chromedp.SetValue("#seed", "-1"), chromedp.SetUploadFiles("#pnginfo-file", []string{abs}))
	poll(`document.querySelector("#seed").value === "1234"`)
	promptBack := str(chromedp.Value("#prompt"))
	do(chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)), chromedp.Click("#lang-switch"))
	shot("webui-phone.png")
	assert.Equal(t, tagged, promptBack)
}

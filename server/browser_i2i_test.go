package server_test

import (
	"path/filepath"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/server"
)

// TestBrowserImg2Img drives the web UI's picture input and mask painter in
// headless chromium: upload a picture (the size follows it), paint a
// stroke over it with the mouse, generate, and check that the server ran
// an inpainting job (the infotext's Denoising strength and Mask blur).
// Screenshots: out/webui-img2img.png and, at a phone's size,
// out/webui-img2img-phone.png.
func TestBrowserImg2Img(t *testing.T) {
	br := openBrowser(t, 1360, 1100)
	ctx, do, poll := br.ctx, br.do, br.poll
	ts := startServer(t, server.Config{Previews: true}, nil)
	eval := func(expr string) float64 {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[float64](expr))
		require.NoError(t, err, expr)
		return v
	}
	shot := br.shot

	do(chromedp.Navigate(ts.URL + "/"))
	poll(`document.querySelector("#model-select").options.length > 0`)
	in := filepath.Join(pipeDir, "images_img2img", "input_in1.png") // 96x64
	do(chromedp.SetUploadFiles("#init-file", []string{in}))
	poll(`!document.querySelector("#init-box").hidden && document.querySelector("#mask-canvas").width === 96`)
	assert.Equal(t, 96.0, eval(`+document.querySelector("#width").value`), "the size follows the picture")
	assert.Equal(t, 64.0, eval(`+document.querySelector("#height").value`))

	// One stroke across the middle of the picture with the mouse.
	do(chromedp.ScrollIntoView("#mask-canvas"))
	left, top := eval(`document.querySelector("#mask-canvas").getBoundingClientRect().left`), eval(`document.querySelector("#mask-canvas").getBoundingClientRect().top`)
	w, h := eval(`document.querySelector("#mask-canvas").getBoundingClientRect().width`), eval(`document.querySelector("#mask-canvas").getBoundingClientRect().height`)
	require.Greater(t, w, 100.0)
	y := top + h/2
	do(chromedp.MouseEvent(chromedp.MousePressed, left+0.25*w, y, chromedp.ButtonLeft))
	for k := 1; k <= 8; k++ {
		do(chromedp.MouseEvent(chromedp.MouseMoved, left+(0.25+0.05*float64(k))*w, y, chromedp.ButtonLeft))
	}
	do(chromedp.MouseEvent(chromedp.MouseReleased, left+0.65*w, y, chromedp.ButtonLeft))
	white := eval(`(() => { const d = i2i.mask.getContext("2d").getImageData(0, 0, i2i.w, i2i.h).data;
		let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 128) n++; return n; })()`)
	assert.Greater(t, white, 96*64*0.025, "the stroke painted the mask")
	assert.Less(t, white, 96*64*0.6, "the stroke painted only part of the mask")
	assert.Equal(t, 1.0, eval(`document.querySelector("#mask-opts").hidden ? 0 : 1`), "mask options show once painted")

	do(chromedp.SendKeys("#prompt", "a red door"), chromedp.SetValue("#steps", "3"), chromedp.SetValue("#seed", "5"),
		chromedp.Click("#generate"))
	poll(`!!document.querySelector("#result-image") || !document.querySelector("#error").hidden`)
	msg, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#error").textContent`))
	require.NoError(t, err)
	require.Empty(t, msg, "the UI shows an error")
	info, err := chromedp.Run(ctx, chromedp.Text("#infotext"))
	require.NoError(t, err)
	assert.Contains(t, info, "Size: 96x64")
	assert.Contains(t, info, "Denoising strength: 0.75, Mask blur: 4")
	shot("webui-img2img.png")

	// The result becomes the next picture; on a phone the painter fills
	// the width.
	do(chromedp.Click("#to-init"))
	poll(`document.querySelector("#init-image").src.startsWith("data:image/png")`)
	do(chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)), chromedp.ScrollIntoView("#init-box"))
	assert.Greater(t, eval(`document.querySelector("#mask-canvas").getBoundingClientRect().width`), 300.0)
	shot("webui-img2img-phone.png")
}

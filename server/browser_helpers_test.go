package server_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
)

// browser is a headless chromium for the UI tests, and where their
// screenshots go (out/).
type browser struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

// openBrowser starts Debian's chromium headless with a window of the given
// size, or skips the test when it is not installed. As root in a sandbox
// without network: no sandbox, no GPU, nothing that phones home, a fresh
// profile. Everything stops when the test ends; actions time out after 3
// minutes in all.
func openBrowser(t *testing.T, width, height int) *browser {
	t.Helper()
	chrome := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			chrome = p
			break
		}
	}
	if chrome == "" {
		t.Skip("chromium not installed (make deps installs it): skipping the real-browser test")
	}
	shots := filepath.Join("..", "out")
	require.NoError(t, os.MkdirAll(shots, 0o755))
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chrome), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(width, height),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("lang", "en-US"),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() { cancelT(); cancelC(); cancelA() })
	return &browser{t: t, ctx: ctx, shots: shots}
}

// do runs the actions in order, failing the test on the first error.
func (b *browser) do(actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	for _, a := range actions {
		_, err := chromedp.Run(b.ctx, a)
		require.NoError(b.t, err)
	}
}

// poll waits up to a minute for the JavaScript expression to be true.
func (b *browser) poll(expr string) {
	b.t.Helper()
	_, err := chromedp.Run(b.ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(60*time.Second)))
	require.NoError(b.t, err, "waiting for %s", expr)
}

// shot saves a full-page screenshot as out/NAME.
func (b *browser) shot(name string) {
	b.t.Helper()
	buf, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	require.NoError(b.t, err)
	require.NoError(b.t, os.WriteFile(filepath.Join(b.shots, name), buf, 0o644))
}

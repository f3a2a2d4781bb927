package cli

import (
	"bufio"
	"io"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
)

func TestServeUsageErrors(t *testing.T) {
	model := t.TempDir()
	for flag, args := range map[string][]string{
		"--model":              {"serve"},
		"--port":               {"serve", "-m", model, "--port", "70000"},
		"--queue":              {"serve", "-m", model, "--queue", "0"},
		"--api-auth":           {"serve", "-m", model, "--api-auth", "nopassword"},
		"--cors-allow-origins": {"serve", "-m", model, "--cors-allow-origins", "not a url"},
		"--max-side":           {"serve", "-m", model, "--max-side", "100"},
		"--vram":               {"serve", "-m", model, "--vram", "lots"},
		"--models-dir":         {"serve", "--models-dir", "/nonexistent"},
	} {
		code, _, stderr := run(args...)
		assert.Equal(t, 2, code, "%v: %s", args, stderr)
		assert.Contains(t, stderr, flag, args)
	}
}

// TestServeStartsAndStops: the command answers within a second, before
// the model is loaded, and exits 0 on SIGINT.
func TestServeStartsAndStops(t *testing.T) {
	dir := testref.Dir(t, "tiny-sd-turbo")
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	start := time.Now()
	go func() {
		code := Main([]string{"zimage", "serve", "-m", dir, "--port", "0", "--outputs", t.TempDir()}, io.Discard, pw)
		pw.Close()
		done <- code
	}()
	lines := bufio.NewScanner(pr)
	addr := regexp.MustCompile(`listening on (http://127\.0\.0\.1:\d+)`)
	var url string
	var log strings.Builder
	for lines.Scan() {
		log.WriteString(lines.Text() + "\n")
		if m := addr.FindStringSubmatch(lines.Text()); m != nil {
			url = m[1]
			break
		}
	}
	require.NotEmpty(t, url, log.String())
	go io.Copy(io.Discard, pr)
	resp, err := http.Get(url + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	up := time.Since(start)
	t.Logf("answering %v after start", up)
	assert.Less(t, up, time.Second, "the server answers before the model loads")
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGINT))
	select {
	case code := <-done:
		assert.Equal(t, 0, code)
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not exit after SIGINT")
	}
}

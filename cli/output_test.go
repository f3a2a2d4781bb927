package cli

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
)

// TestGenerateWriteFailureKeepsEarlierImages: when the second image of a
// batch cannot be written, the first stays on disk whole, the command
// exits 1 with a message naming the path, and no temporary file is left.
func TestGenerateWriteFailureKeepsEarlierImages(t *testing.T) {
	if _, err := vk.ListDevices(); err != nil {
		t.Skipf("no Vulkan: %v", err)
	}
	dir := testref.Dir(t, "tiny-sd-turbo")
	out := t.TempDir()
	// A folder where the second image goes: renaming a file over it fails.
	blocked := filepath.Join(out, "img-2.png")
	if err := os.Mkdir(blocked, 0o755); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run("generate", "-m", dir, "-p", "a red cube", "-W", "64", "-H", "64", "-b", "2",
		"-o", filepath.Join(out, "img-{n}.png"), "--quiet")
	if code != 1 || !strings.Contains(stderr, blocked) {
		t.Fatalf("exit %d, stderr %q: want 1 and a message naming %s", code, stderr, blocked)
	}
	f, err := os.Open(filepath.Join(out, "img-1.png"))
	if err != nil {
		t.Fatalf("the first image is gone: %v", err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Fatalf("the first image is damaged: %v", err)
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

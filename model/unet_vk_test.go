package model

import (
	"errors"
	"os"
	"testing"

	"github.com/zimage/zimage/engine/vk"
)

// openUNetVulkan opens the default device (ZIMAGE_DEVICE selects one),
// skipping when there is none.
func openUNetVulkan(t testing.TB) *vk.Device {
	t.Helper()
	opts := vk.DefaultOptions()
	opts.Profile = os.Getenv("ZIMAGE_PROFILE") == "1"
	d, err := vk.Open(opts)
	if errors.Is(err, vk.ErrNoDevice) {
		t.Skip("no Vulkan device")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

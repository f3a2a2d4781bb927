package zimage

import (
	"bytes"
	"errors"
	"image"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestWritePNGFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.png")
	img := image.NewRGBA(image.Rect(0, 0, 8, 8))
	img.Pix[0] = 200
	require.NoError(t, WritePNGFile(path, img, "a cube\nSteps: 1"))
	f, err := os.Open(path)
	require.NoError(t, err)
	text, err := ReadPNGText(f)
	f.Close()
	require.NoError(t, err)
	require.Equal(t, "a cube\nSteps: 1", text["parameters"])
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), st.Mode().Perm())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file is left")
}

// TestWriteFailureKeepsEarlierOutput: a write that fails half way (a full
// disk) leaves the earlier file at the path whole, removes its temporary
// file and names the path in a typed error.
func TestWriteFailureKeepsEarlierOutput(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.png")
	require.NoError(t, os.WriteFile(path, []byte("earlier image"), 0o644))
	err := writeFileAtomic(path, func(w io.Writer) error {
		w.Write(bytes.Repeat([]byte{1}, 1<<17))
		return &os.PathError{Op: "write", Path: "tmp", Err: syscall.ENOSPC}
	})
	var oe *OutputError
	require.True(t, errors.As(err, &oe), "%v", err)
	require.Equal(t, path, oe.Path)
	require.ErrorIs(t, err, syscall.ENOSPC)
	require.Contains(t, err.Error(), path)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "earlier image", string(got))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "the temporary file is removed")
}

func TestWriteUnwritablePath(t *testing.T) {
	img := image.NewRGBA(image.Rect(0, 0, 8, 8))
	missing := filepath.Join(t.TempDir(), "no", "such", "a.png")
	err := WritePNGFile(missing, img, "")
	var oe *OutputError
	require.True(t, errors.As(err, &oe) && oe.Path == missing, "%v", err)
	require.ErrorIs(t, err, os.ErrNotExist)

	if os.Geteuid() == 0 {
		t.Log("running as root: a read-only folder does not stop writes, not checked")
		return
	}
	ro := t.TempDir()
	require.NoError(t, os.Chmod(ro, 0o555))
	defer os.Chmod(ro, 0o755)
	err = WritePNGFile(filepath.Join(ro, "a.png"), img, "")
	require.ErrorIs(t, err, os.ErrPermission)
	require.Contains(t, err.Error(), ro)
}

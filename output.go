package zimage

import (
	"bufio"
	"fmt"
	"image"
	"io"
	"os"
	"path/filepath"
)

// OutputError is a failure to write an output file: a full disk, a
// missing or unwritable folder. Whatever was at Path before is untouched.
// Err is the underlying error (errors.Is(err, syscall.ENOSPC) works).
type OutputError struct {
	Path string
	Err  error
}

func (e *OutputError) Error() string {
	return fmt.Sprintf("zimage: writing %s: %v", e.Path, e.Err)
}

func (e *OutputError) Unwrap() error { return e.Err }

// WritePNGFile writes img as a PNG carrying parameters (see EncodePNG) to
// path. It writes a temporary file in the same folder, syncs it and renames
// it over path, so a reader never sees a partial image and a failure (full
// disk, unwritable folder) leaves any earlier file at path as it was; the
// error is an *OutputError naming path.
func WritePNGFile(path string, img image.Image, parameters string) error {
	return writeFileAtomic(path, func(w io.Writer) error { return EncodePNG(w, img, parameters) })
}

// writeFileAtomic writes path through a temporary file renamed over it.
func writeFileAtomic(path string, write func(io.Writer) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return &OutputError{Path: path, Err: err}
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = &OutputError{Path: path, Err: err}
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<16)
	if err := write(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	// CreateTemp makes the file private; outputs are ordinary files.
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

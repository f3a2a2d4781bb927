package model

import (
	"errors"
	"fmt"

	"github.com/zimage/zimage/model/safetensors"
)

// FileSource is a Source backed by memory-mapped safetensors files, whose
// keys are used as they are (a diffusers component's files).
type FileSource struct {
	*Source
	Files []*safetensors.File
}

// OpenFileSource maps the files (shards of one component) and adds every
// tensor under its own name. A name found in two files is an error.
func OpenFileSource(component string, paths ...string) (*FileSource, error) {
	fs := &FileSource{Source: NewSource(component)}
	for _, p := range paths {
		f, err := safetensors.Open(p)
		if err != nil {
			fs.Close()
			return nil, fmt.Errorf("model: %s: %w", component, err)
		}
		fs.Files = append(fs.Files, f)
		for _, name := range f.Names() {
			if prev := fs.Entry(name); prev != nil {
				fs.Close()
				return nil, fmt.Errorf("model: %s: tensor %q is in both %s and %s", component, name, prev.File, p)
			}
			fs.AddTensor(name, f.Tensor(name), p)
		}
	}
	return fs, nil
}

// Close unmaps every file.
func (fs *FileSource) Close() error {
	var errs []error
	for _, f := range fs.Files {
		errs = append(errs, f.Close())
	}
	fs.Files = nil
	return errors.Join(errs...)
}

// Package mmap maps whole files read-only, for the checkpoint readers
// (model/safetensors, model/gguf): opening a multi-gigabyte file costs
// nothing until its pages are touched.
package mmap

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// Map maps the regular file at path read-only and shared. An empty file
// gives an empty, unmapped slice (mmap refuses length 0). Errors name the
// path; callers add their package prefix.
func Map(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	size := st.Size()
	if size == 0 {
		return []byte{}, nil
	}
	if int64(int(size)) != size {
		return nil, fmt.Errorf("%s: %d bytes do not fit the address space", path, size)
	}
	mem, err := syscall.Mmap(int(fh.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	return mem, nil
}

// Unmap releases a mapping made by Map (a no-op for an empty one).
func Unmap(mem []byte) error {
	if len(mem) == 0 {
		return nil
	}
	return syscall.Munmap(mem)
}

// Release tells the kernel that the process no longer needs the pages of
// b, a slice of a mapping made by Map (madvise MADV_DONTNEED): they leave
// the resident set and are read again, from the page cache or the file,
// when touched. Only whole pages inside b are released, so neighbouring
// data keeps its pages. Errors are ignored: releasing is advice.
func Release(b []byte) {
	if len(b) == 0 {
		return
	}
	page := uintptr(syscall.Getpagesize())
	start := uintptr(unsafe.Pointer(&b[0]))
	end := start + uintptr(len(b))
	lo, hi := (start+page-1)/page*page, end/page*page
	if hi <= lo {
		return
	}
	_ = syscall.Madvise(b[lo-start:hi-start], syscall.MADV_DONTNEED)
}

package safetensors

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
)

// ErrFileChanged: a mapped file lost bytes while it was open (truncated,
// or its storage failed), so reading a tensor's pages faulted. Reopen the
// file; errors wrapping it name the path.
var ErrFileChanged = errors.New("safetensors: the file shrank or failed while mapped (changed on disk?)")

// Guard runs read, which reads tensor bytes from the mapping of the file
// at path (Tensor.Data), on the calling goroutine. A read of a page past
// the end of a file truncated after Open raises SIGBUS; Guard turns it
// into an error wrapping ErrFileChanged instead of a crash, through
// runtime/debug.SetPanicOnFault, which covers only Go code on this
// goroutine.
//
// What no guard catches:
//   - bytes changed in place (same size, another writer or a file
//     replaced by writing into it): reads see the new bytes without a
//     fault. Replacing a file by rename is safe: the mapping keeps the old
//     one. The NaN/Inf check of a weight's first upload catches some.
//   - reads from C code (a driver reading the mapping): zimage never hands
//     the mapping to C; the Vulkan backend copies it in Go.
//   - reads on other goroutines, or by callers of Tensor.Data that do not
//     use Guard: the process dies with "unexpected fault address".
//   - a read in a system call (writing the mapping to a file) fails with
//     EFAULT, which the write reports as an ordinary error.
func Guard(path string, read func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		r := recover()
		if r == nil {
			return
		}
		// A fault comes as a runtime.Error with the faulting address;
		// anything else is not ours to swallow.
		if re, ok := r.(runtime.Error); ok {
			if fa, ok := re.(interface{ Addr() uintptr }); ok {
				err = fmt.Errorf("%w: reading %s faulted at address %#x", ErrFileChanged, path, fa.Addr())
				return
			}
		}
		panic(r)
	}()
	return read()
}

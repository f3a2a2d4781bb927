// Package gcstress forces garbage collections for the tests that prove no
// Go memory a Vulkan call reads can be freed under it.
package gcstress

import (
	"runtime"
	"runtime/debug"
)

// Loop sets GOGC to 1 and starts a goroutine calling runtime.GC in a loop
// (every 256th cycle also debug.FreeOSMemory), as an embedding program may.
// stop ends it, restores GOGC and returns the number of forced cycles.
func Loop() (stop func() int) {
	old := debug.SetGCPercent(1)
	done := make(chan struct{})
	cycles := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-done:
				cycles <- n
				return
			default:
			}
			runtime.GC()
			if n%256 == 0 {
				debug.FreeOSMemory()
			}
			n++
		}
	}()
	return func() int {
		close(done)
		n := <-cycles
		debug.SetGCPercent(old)
		return n
	}
}

// Package cli is the zimage command: flags in, the root package's options
// out. cmd/zimage/main.go calls Main.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	ucli "github.com/urfave/cli/v2"

	"github.com/zimage/zimage"
)

// usageError marks a mistake in the command line (exit code 2), as opposed
// to a failure while running (exit code 1).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// Main runs the command line and returns the process exit code: 0 on
// success, 2 for usage errors, 1 for runtime failures. Errors are one line
// on stderr, never a stack trace.
func Main(args []string, stdout, stderr io.Writer) int {
	app := NewApp(stdout, stderr)
	err := app.Run(args)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "zimage:", err)
	var ue *usageError
	if errors.As(err, &ue) || isFlagError(err) {
		return 2
	}
	return 1
}

// isFlagError recognises urfave/cli's own parse errors (unknown flag, bad
// value), which are usage errors too.
func isFlagError(err error) bool {
	var ec ucli.ExitCoder
	if errors.As(err, &ec) {
		return false
	}
	msg := err.Error()
	for _, s := range []string{"flag provided but not defined", "invalid value", "flag needs an argument", "Required flag", "No help topic"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// NewApp builds the command tree.
func NewApp(stdout, stderr io.Writer) *ucli.App {
	app := &ucli.App{
		Name:      "zimage",
		Usage:     "fast few-step text-to-image on any Vulkan device (SD-Turbo, SDXL-Turbo, SD 1.x/2.x, SDXL)",
		Version:   zimage.Version,
		Writer:    stdout,
		ErrWriter: stderr,
		// --lora takes paths, which may hold commas.
		DisableSliceFlagSeparator: true,
		// Errors are printed once by Main; keep urfave from printing them too.
		ExitErrHandler: func(*ucli.Context, error) {},
		OnUsageError: func(c *ucli.Context, err error, _ bool) error {
			return &usageError{msg: err.Error()}
		},
		Commands: []*ucli.Command{
			generateCommand(),
			serveCommand(),
			devicesCommand(),
			infoCommand(),
			tokenizeCommand(),
			makeModelCommand(),
			convertCommand(),
		},
	}
	// A mistyped flag gets a one-line error, not the whole help page.
	for _, c := range app.Commands {
		c.OnUsageError = app.OnUsageError
	}
	return app
}

// Run is Main for cmd/zimage.
func Run() {
	os.Exit(Main(os.Args, os.Stdout, os.Stderr))
}

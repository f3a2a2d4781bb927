package cli

import (
	"fmt"
	"image"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/zimage/zimage"
)

// outputPath expands the --output pattern: {seed}, {n} (1-based image
// index), {prompt} (a filename-safe slug of the prompt) and {date}. With
// several images and no {n} in the pattern, "-N" goes before the extension
// so that images never overwrite each other.
func outputPath(pattern string, seed uint64, n, total int, prompt string) string {
	r := strings.NewReplacer(
		"{seed}", fmt.Sprint(seed),
		"{n}", fmt.Sprint(n),
		"{prompt}", slug(prompt, 48),
		"{date}", time.Now().Format("20060102-150405"),
	)
	out := r.Replace(pattern)
	if total > 1 && !strings.Contains(pattern, "{n}") {
		ext := filepath.Ext(out)
		out = strings.TrimSuffix(out, ext) + fmt.Sprintf("-%d", n) + ext
	}
	if filepath.Ext(out) == "" {
		out += ".png"
	}
	return out
}

// slug keeps letters and digits, joins words with '-', and cuts at max runes.
func slug(s string, max int) string {
	var b strings.Builder
	dash := false
	n := 0
	for _, r := range strings.ToLower(s) {
		if n >= max {
			break
		}
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
				n++
			}
			b.WriteRune(r)
			n++
			dash = false
		} else {
			dash = true
		}
	}
	if b.Len() == 0 {
		return "image"
	}
	return b.String()
}

// checkWritable fails early, before minutes of compute, when the output
// folder does not exist or cannot be written.
func checkWritable(path string) error {
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("output folder %s: %w", dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("output folder %s is not a folder", dir)
	}
	f, err := os.CreateTemp(dir, ".zimage-write-test-*")
	if err != nil {
		return fmt.Errorf("output folder %s is not writable: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// writePNG writes through a temporary file renamed into place: a failure
// (full disk) leaves what was at path, and the earlier images of a batch;
// the error names the path.
func writePNG(path string, img image.Image, meta string) error {
	return zimage.WritePNGFile(path, img, meta)
}

// progressBar draws "denoise [=====>    ] 3/4  12.1s  ETA 4.0s" on a
// terminal, and prints plain lines otherwise (logs, CI).
type progressBar struct {
	w     io.Writer
	tty   bool
	start time.Time
	quiet bool
	last  string
}

func newProgressBar(w io.Writer, quiet bool) *progressBar {
	tty := false
	if f, ok := w.(*os.File); ok {
		st, err := f.Stat()
		tty = err == nil && st.Mode()&os.ModeCharDevice != 0
	}
	return &progressBar{w: w, tty: tty, start: time.Now(), quiet: quiet}
}

func (p *progressBar) step(stage string, step, steps int) {
	if p.quiet {
		return
	}
	el := time.Since(p.start)
	eta := time.Duration(0)
	if step > 0 {
		eta = el / time.Duration(step) * time.Duration(steps-step)
	}
	if !p.tty {
		fmt.Fprintf(p.w, "%s: step %d/%d, %.1fs elapsed, ETA %.1fs\n", stage, step, steps, el.Seconds(), eta.Seconds())
		return
	}
	const width = 24
	fill := width * step / max(steps, 1)
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
	line := fmt.Sprintf("\r%s [%s] %d/%d  %.1fs  ETA %.1fs ", stage, bar, step, steps, el.Seconds(), eta.Seconds())
	fmt.Fprint(p.w, line)
	if step == steps {
		fmt.Fprintln(p.w)
	}
}

func (p *progressBar) printf(format string, args ...any) {
	if !p.quiet {
		fmt.Fprintf(p.w, format, args...)
	}
}

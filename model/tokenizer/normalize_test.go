package tokenizer

import (
	"encoding/json"
	"os"
	"slices"
	"testing"
)

// TestPreTokenizeFixture compares the text pipeline (ftfy fixers,
// whitespace_clean, lower, CLIP pattern) with pre-tokens computed by Python's
// own unicodedata, str.lower, re and regex modules (testdata/gen_pretok.py):
// edge cases plus 400 random strings over awkward character pools.
func TestPreTokenizeFixture(t *testing.T) {
	raw, err := os.ReadFile("testdata/pretok.json")
	if err != nil {
		t.Fatal(err)
	}
	var fx struct {
		Cases []struct {
			Text      string   `json:"text"`
			PreTokens []string `json:"pretokens"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(raw, &fx); err != nil {
		t.Fatal(err)
	}
	if len(fx.Cases) < 100 {
		t.Fatalf("only %d cases", len(fx.Cases))
	}
	fails := 0
	for _, c := range fx.Cases {
		got := []string{}
		preTokenize(pyLower(whitespaceClean(fixText(c.Text))), func(s string) { got = append(got, s) })
		if !slices.Equal(got, c.PreTokens) {
			t.Errorf("%+q:\n got %+q\nwant %+q", c.Text, got, c.PreTokens)
			if fails++; fails > 10 {
				t.Fatal("too many failures")
			}
		}
	}
}

package cli

import "testing"

func TestParseByteSize(t *testing.T) {
	cases := map[string]int64{
		"1024": 1024, "512MB": 512e6, "4GB": 4e9, "3.5GiB": 3758096384, "1g": 1 << 30,
		"256 MiB": 256 << 20, "2KiB": 2048, "1.5gb": 1.5e9,
	}
	for in, want := range cases {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "abc", "-1GB", "4XB", "0", "1e3MB"} {
		if _, err := ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", bad)
		}
	}
}

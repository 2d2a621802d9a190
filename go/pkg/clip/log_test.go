package clip

import "testing"

// The levels the worker passes, and the Go clip's aliases.
func TestSetLogLevel(t *testing.T) {
	for _, l := range []string{"debug", "info", "warning", "disabled", "none", "error", "off"} {
		if err := SetLogLevel(l); err != nil {
			t.Fatalf("SetLogLevel(%q): %v", l, err)
		}
	}
	if err := SetLogLevel("error"); err != nil {
		t.Fatal(err)
	}
}

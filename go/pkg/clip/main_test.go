package clip

import (
	"fmt"
	"os"
	"testing"
)

// TestMain fails the run when a test leaves cgo handles behind: every handle given
// to libclip must be deleted once its call or mount is over.
func TestMain(m *testing.M) {
	code := m.Run()
	if n := liveHandles.Load(); n != 0 && code == 0 {
		fmt.Fprintf(os.Stderr, "FAIL: %d cgo handles still live after the tests\n", n)
		code = 1
	}
	os.Exit(code)
}

package testutil

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"time"
)

// IsMounted reports whether path is a mount point, from /proc/self/mountinfo
// (as the worker checks it).
func IsMounted(path string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == path {
			return true
		}
	}
	return false
}

func unescapeMountinfo(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// WaitMounted is the worker's readiness loop (image.go waitForImageMount): poll the
// mount table every 5 ms for up to 5 s while watching the mount's error channel.
func WaitMounted(mountPoint string, errs <-chan error) error {
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !IsMounted(mountPoint) {
		select {
		case err, ok := <-errs:
			if ok && err != nil {
				return fmt.Errorf("image mount failed: %w", err)
			}
			return fmt.Errorf("image mount stopped before it was ready")
		case <-tick.C:
		case <-deadline:
			return fmt.Errorf("image mount was not ready after 5s")
		}
	}
	return nil
}

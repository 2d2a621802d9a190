package testutil

import (
	"path/filepath"
	"testing"
)

// The helpers themselves: a layout written here is accepted by skopeo and can be
// pushed to an htpasswd-protected registry.
func TestLayoutPushesToRegistry(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	WriteLayout(t, dir, "v1", SampleImage(1<<20))
	reg := StartRegistry(t, true)
	reg.Push(t, dir, "v1", "team/app:v1")
	copyDir := filepath.Join(t.TempDir(), "copy")
	Skopeo(t, "copy", "--quiet", "--src-tls-verify=false", "--src-creds", reg.User+":"+reg.Pass,
		"docker://"+reg.Ref("team/app:v1"), "oci:"+copyDir+":v1")
	if got := len(Expected(SampleImage(1))); got != 13 {
		t.Fatalf("expected tree has %d entries, want 13", got)
	}
}

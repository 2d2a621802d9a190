package testutil

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Registry is a docker-registry process serving plain HTTP on 127.0.0.1.
type Registry struct {
	Addr       string // 127.0.0.1:port
	User, Pass string // set when started with auth
}

// Need fails the test (never skips) when a program the tests use is missing.
func Need(t testing.TB, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is required by this test and is not installed (make deps installs it)", p)
		}
	}
}

// NeedFUSE fails the test (never skips) when /dev/fuse is missing.
func NeedFUSE(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("FUSE is required by this test: %v", err)
	}
}

// StartRegistry starts Debian's docker-registry on a free loopback port with its
// storage and config in a temp dir; with auth, it requires basic credentials from
// an htpasswd file (bcrypt, written by `htpasswd -Bbn`). It stops at test cleanup.
func StartRegistry(t testing.TB, auth bool) *Registry {
	t.Helper()
	Need(t, "docker-registry")
	dir := t.TempDir()
	r := &Registry{}
	authConf := ""
	if auth {
		Need(t, "htpasswd")
		r.User, r.Pass = "clipuser", "clip-secret-pw"
		out, err := exec.Command("htpasswd", "-Bbn", r.User, r.Pass).Output()
		if err != nil {
			t.Fatalf("htpasswd: %v", err)
		}
		pw := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(pw, bytes.TrimSpace(out), 0o600); err != nil {
			t.Fatal(err)
		}
		authConf = fmt.Sprintf("auth:\n  htpasswd:\n    realm: clip-test\n    path: %s\n", pw)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		r.Addr = freeAddr(t)
		conf := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
%s`, filepath.Join(dir, "data"), r.Addr, authConf)
		cfg := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		var logBuf bytes.Buffer
		cmd := exec.Command("docker-registry", "serve", cfg)
		cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting docker-registry: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		if lastErr = waitReady(r.Addr, exited); lastErr == nil {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
			})
			return r
		}
		_ = cmd.Process.Kill()
		<-exited
		lastErr = fmt.Errorf("%v; registry log:\n%s", lastErr, logBuf.String())
	}
	t.Fatalf("docker-registry did not start: %v", lastErr)
	return nil
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitReady(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(15 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("docker-registry exited")
		default:
		}
		resp, err := client.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no answer on %s within 15s", addr)
}

// Ref is the reference of repoTag ("team/app:v1") in this registry.
func (r *Registry) Ref(repoTag string) string { return r.Addr + "/" + repoTag }

// Push copies the image tag of the OCI layout at layoutDir to repoTag with skopeo.
func (r *Registry) Push(t testing.TB, layoutDir, tag, repoTag string) {
	t.Helper()
	args := []string{"copy", "--quiet", "--dest-tls-verify=false"}
	if r.User != "" {
		args = append(args, "--dest-creds", r.User+":"+r.Pass)
	}
	args = append(args, "oci:"+layoutDir+":"+tag, "docker://"+r.Ref(repoTag))
	Skopeo(t, args...)
}

// Skopeo runs skopeo with args and fails the test on error, showing its output.
func Skopeo(t testing.TB, args ...string) {
	t.Helper()
	Need(t, "skopeo")
	cmd := exec.Command("skopeo", args...)
	// skopeo wants a policy; the default one may be missing on a bare machine.
	policy := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Args = append([]string{"skopeo", "--policy", policy}, args...)
	cmd.Env = append(os.Environ(), "REGISTRY_AUTH_FILE="+filepath.Join(t.TempDir(), "auth.json"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

package testutil

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// S3Server is a versitygw process (posix backend, signatures checked) serving
// plain HTTP on 127.0.0.1, its buckets directories under Root.
type S3Server struct {
	Endpoint  string // http://127.0.0.1:port
	Region    string
	AccessKey string
	SecretKey string
	Root      string // the posix backend's top directory: one directory per bucket
}

// StartS3 starts versitygw on a free loopback port with a temp dir as its storage
// and stops it at test cleanup. It fails the test (never skips) when versitygw is
// not installed (make deps installs it).
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	Need(t, "versitygw")
	s := &S3Server{
		Region:    "us-east-1",
		AccessKey: "CLIPTESTACCESSKEY",
		SecretKey: "clip-test-secret-key-0123456789",
		Root:      filepath.Join(t.TempDir(), "s3"),
	}
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		addr := freeAddr(t)
		var logBuf bytes.Buffer
		cmd := exec.Command("versitygw", "--access", s.AccessKey, "--secret", s.SecretKey,
			"--region", s.Region, "--port", addr, "--quiet", "posix", s.Root)
		cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting versitygw: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		if lastErr = waitListening(addr, exited); lastErr == nil {
			s.Endpoint = "http://" + addr
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
			})
			return s
		}
		_ = cmd.Process.Kill()
		<-exited
		lastErr = fmt.Errorf("%v; versitygw log:\n%s", lastErr, logBuf.String())
	}
	t.Fatalf("versitygw did not start: %v", lastErr)
	return nil
}

// CreateBucket makes a bucket (with the posix backend, a directory under Root).
func (s *S3Server) CreateBucket(t testing.TB, name string) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(s.Root, name), 0o755); err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
}

// ObjectPath is where the posix backend keeps the object key of bucket.
func (s *S3Server) ObjectPath(bucket, key string) string {
	return filepath.Join(s.Root, bucket, filepath.FromSlash(key))
}

func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("versitygw exited")
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("nothing listening on %s within 15s", addr)
}

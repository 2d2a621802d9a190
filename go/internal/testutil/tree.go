package testutil

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// FullNode is one entry of a directory tree: everything a v1 round trip keeps.
type FullNode struct {
	Type   string // "dir", "file", "symlink", "fifo", "char", "block"
	Mode   uint32 // permission bits with setuid, setgid and sticky (07777)
	UID    uint32
	GID    uint32
	Size   int64
	SHA256 string            // regular files
	Target string            // symlinks
	Rdev   uint64            // devices
	Xattrs map[string]string // user.* attributes (regular files and directories)
	Mtime  time.Time
	Links  string // regular files with several links: the group's paths, sorted, comma-separated
}

func (n FullNode) String() string {
	var x []string
	for k, v := range n.Xattrs {
		x = append(x, k+"="+v)
	}
	sort.Strings(x)
	return fmt.Sprintf("%s mode=%04o uid=%d gid=%d size=%d sha=%.12s target=%q rdev=%d xattrs=%v mtime=%s links=%q",
		n.Type, n.Mode, n.UID, n.GID, n.Size, n.SHA256, n.Target, n.Rdev, x, n.Mtime.UTC().Format(time.RFC3339Nano), n.Links)
}

func (n FullNode) equal(o FullNode) bool {
	if n.Type != o.Type || n.Mode != o.Mode || n.UID != o.UID || n.GID != o.GID || n.SHA256 != o.SHA256 ||
		n.Target != o.Target || n.Rdev != o.Rdev || !n.Mtime.Equal(o.Mtime) || n.Links != o.Links || len(n.Xattrs) != len(o.Xattrs) {
		return false
	}
	// Directory sizes are not comparable across file systems.
	if n.Type != "dir" && n.Size != o.Size {
		return false
	}
	for k, v := range n.Xattrs {
		if o.Xattrs[k] != v {
			return false
		}
	}
	return true
}

// FullTree maps "/path" to its node (the root is left out).
type FullTree map[string]FullNode

// Scan walks root without following symlinks and records every entry, reading
// every regular file.
func Scan(t testing.TB, root string) FullTree {
	t.Helper()
	tr := FullTree{}
	inodes := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(p, root)
		if rel == "" {
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return fmt.Errorf("lstat %s: %w", p, err)
		}
		n := FullNode{
			Mode:  st.Mode & 07777,
			UID:   st.Uid,
			GID:   st.Gid,
			Size:  st.Size,
			Mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFDIR:
			n.Type = "dir"
		case syscall.S_IFREG:
			n.Type = "file"
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if int64(len(b)) != st.Size {
				return fmt.Errorf("%s: read %d bytes, stat says %d", p, len(b), st.Size)
			}
			sum := sha256.Sum256(b)
			n.SHA256 = hex.EncodeToString(sum[:])
			if st.Nlink > 1 {
				inodes[st.Ino] = append(inodes[st.Ino], rel)
			}
		case syscall.S_IFLNK:
			n.Type, n.Mode = "symlink", 0
			if n.Target, err = os.Readlink(p); err != nil {
				return err
			}
			// Symlink mtimes are not settable through every path (and FUSE
			// reports what it likes): compare the target only.
			n.Mtime = time.Time{}
		case syscall.S_IFIFO:
			n.Type = "fifo"
		case syscall.S_IFCHR:
			n.Type, n.Rdev = "char", st.Rdev
		case syscall.S_IFBLK:
			n.Type, n.Rdev = "block", st.Rdev
		default:
			n.Type = fmt.Sprintf("mode %o", st.Mode&syscall.S_IFMT)
		}
		if n.Type == "file" || n.Type == "dir" {
			if n.Xattrs, err = userXattrs(p); err != nil {
				return err
			}
		}
		tr[rel] = n
		return nil
	})
	if err != nil {
		t.Fatalf("scanning %s: %v", root, err)
	}
	for _, paths := range inodes {
		sort.Strings(paths)
		group := strings.Join(paths, ",")
		for _, p := range paths {
			n := tr[p]
			n.Links = group
			tr[p] = n
		}
	}
	return tr
}

// userXattrs reads the user.* extended attributes of p (nil if none).
func userXattrs(p string) (map[string]string, error) {
	buf := make([]byte, 64<<10)
	n, err := syscall.Listxattr(p, buf)
	if err == syscall.ENOTSUP {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listxattr %s: %w", p, err)
	}
	var out map[string]string
	for _, name := range bytes.Split(buf[:n], []byte{0}) {
		k := string(name)
		if !strings.HasPrefix(k, "user.") {
			continue
		}
		val := make([]byte, 64<<10)
		m, err := syscall.Getxattr(p, k, val)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s %s: %w", p, k, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = string(val[:m])
	}
	return out, nil
}

// DiffFull lists the differences between want and got, sorted; empty if equal.
func DiffFull(want, got FullTree) []string {
	var out []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			out = append(out, "missing "+p+": "+w.String())
		case !w.equal(g):
			out = append(out, fmt.Sprintf("%s:\n   want %s\n   got  %s", p, w, g))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			out = append(out, "unexpected "+p+": "+g.String())
		}
	}
	sort.Strings(out)
	return out
}

// MakeTree writes a directory tree with the entries a build leaves and a v1
// archive must keep: nested directories, empty and large files, an executable,
// setuid/setgid files, a sticky directory, other owners, symlinks (relative,
// absolute, dangling), a hard link group, a fifo, a character device (when the
// process may create one), user xattrs, and distinct mtimes (nanoseconds too).
// It returns root.
func MakeTree(t testing.TB, root string) string {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	p := func(rel string) string { return filepath.Join(root, rel) }
	for _, d := range []string{"etc", "usr/bin", "usr/lib/deep/er", "tmp", "empty", "home/user"} {
		must(os.MkdirAll(p(d), 0o755))
	}
	must(os.WriteFile(p("etc/os-release"), []byte("NAME=clip-test\nID=clip\n"), 0o644))
	must(os.WriteFile(p("etc/empty"), nil, 0o600))
	must(os.WriteFile(p("usr/bin/tool"), []byte("#!/bin/sh\necho tool\n"), 0o755))
	must(os.WriteFile(p("usr/bin/suid"), []byte("setuid"), 0o755))
	must(syscall.Chmod(p("usr/bin/suid"), 0o4755))
	must(os.WriteFile(p("usr/bin/sgid"), []byte("setgid"), 0o755))
	must(syscall.Chmod(p("usr/bin/sgid"), 0o2755))
	must(syscall.Chmod(p("tmp"), 0o1777))
	big := make([]byte, 3<<20+12345)
	seed := uint32(42)
	for i := range big {
		seed = seed*1664525 + 1013904223
		big[i] = byte(seed >> 24)
	}
	must(os.WriteFile(p("usr/lib/deep/er/random.bin"), big, 0o644))
	text := bytes.Repeat([]byte("compressible line of text, again and again\n"), 50000)
	must(os.WriteFile(p("usr/lib/text.txt"), text, 0o644))
	must(os.WriteFile(p("usr/lib/text-copy.txt"), text, 0o644)) // same contents, stored once
	must(os.WriteFile(p("usr/lib/libfoo.so.1"), []byte("ELF-ish"), 0o755))
	must(os.Link(p("usr/lib/libfoo.so.1"), p("usr/lib/libfoo-hard.so.1")))
	must(os.Link(p("usr/lib/libfoo.so.1"), p("usr/bin/foo-hard")))
	must(os.Symlink("libfoo.so.1", p("usr/lib/libfoo.so")))
	must(os.Symlink("/etc/os-release", p("etc/absolute-link")))
	must(os.Symlink("../nowhere", p("etc/dangling")))
	must(os.WriteFile(p("home/user/notes"), []byte("owned by 1000"), 0o640))
	must(os.Lchown(p("home/user/notes"), 1000, 1000))
	must(os.Lchown(p("home/user"), 1000, 1000))
	must(syscall.Mkfifo(p("tmp/fifo"), 0o644))
	if err := syscall.Mknod(p("tmp/null"), syscall.S_IFCHR|0o666, int(mkdev(1, 3))); err != nil {
		t.Logf("no character device in the tree (mknod: %v)", err)
	}
	must(syscall.Setxattr(p("usr/bin/tool"), "user.origin", []byte("clip test"), 0))
	must(syscall.Setxattr(p("etc"), "user.dir", []byte("a directory attribute"), 0))
	// Mtimes last, children before parents.
	stamp := time.Date(2024, 3, 1, 12, 0, 0, 123456789, time.UTC)
	var all []string
	must(filepath.WalkDir(root, func(q string, _ fs.DirEntry, err error) error {
		all = append(all, q)
		return err
	}))
	for i := len(all) - 1; i >= 0; i-- {
		if fi, err := os.Lstat(all[i]); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			continue
		}
		ts := stamp.Add(time.Duration(i) * time.Minute)
		must(os.Chtimes(all[i], ts, ts))
	}
	return root
}

func mkdev(major, minor uint64) uint64 {
	return (major&0xfff)<<8 | (minor & 0xff) | (major&^0xfff)<<32 | (minor&^0xff)<<12
}

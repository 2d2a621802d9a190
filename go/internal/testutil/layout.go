// Package testutil builds what the Go tests run against: OCI layouts written here
// (gzip tar layers), a real registry (Debian's docker-registry on 127.0.0.1, with or
// without htpasswd), skopeo pushes, and snapshots of mounted trees to compare.
package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// Entry is one tar entry of a layer.
type Entry struct {
	Path   string // relative, no leading slash ("etc/hosts")
	Type   byte   // tar.TypeReg, TypeDir, TypeSymlink, TypeLink
	Mode   int64  // permission bits
	Data   []byte // regular files
	Target string // symlink target, or hardlink target path (relative)
}

// Dir, File, Symlink, Hardlink and Whiteout make entries.
func Dir(p string) Entry { return Entry{Path: p, Type: tar.TypeDir, Mode: 0o755} }

// File is a regular file with mode 0644.
func File(p, data string) Entry {
	return Entry{Path: p, Type: tar.TypeReg, Mode: 0o644, Data: []byte(data)}
}

// Exec is a regular file with mode 0755.
func Exec(p, data string) Entry {
	return Entry{Path: p, Type: tar.TypeReg, Mode: 0o755, Data: []byte(data)}
}

// Symlink is a symbolic link.
func Symlink(p, target string) Entry {
	return Entry{Path: p, Type: tar.TypeSymlink, Mode: 0o777, Target: target}
}

// Hardlink is a hard link to the earlier entry target.
func Hardlink(p, target string) Entry { return Entry{Path: p, Type: tar.TypeLink, Target: target} }

// Whiteout deletes p from the layers below.
func Whiteout(p string) Entry {
	return File(path.Join(path.Dir(p), ".wh."+path.Base(p)), "")
}

// BigFile is a file of n pseudo-random text bytes (seeded, so reproducible): gzip
// compresses it to about 3/4, so indexing it takes real decompression work. A 64 KiB
// block repeats, further apart than gzip's 32 KiB window can see, which keeps making
// it cheap (the race detector slows byte loops a lot).
func BigFile(p string, n int, seed int64) Entry {
	r := rand.New(rand.NewSource(seed))
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n"
	block := make([]byte, 64<<10)
	for i := range block {
		block[i] = alphabet[r.Intn(len(alphabet))]
	}
	b := make([]byte, n)
	for i := 0; i < n; i += copy(b[i:], block) {
	}
	return Entry{Path: p, Type: tar.TypeReg, Mode: 0o644, Data: b}
}

// Image is what WriteLayout writes.
type Image struct {
	Layers     [][]Entry
	Env        []string
	Cmd        []string
	Entrypoint []string
	WorkingDir string
	User       string
	Labels     map[string]string
}

// SampleImage is a small three-layer image with directories, an overwritten file, a
// whiteout, a symlink, a hardlink and a big file of bigBytes.
func SampleImage(bigBytes int) Image {
	return Image{
		Layers: [][]Entry{
			{
				Dir("etc"), File("etc/os-release", "ID=cliptest\nVERSION_ID=1\n"),
				File("etc/hostname", "base\n"), File("etc/motd", "removed by layer 3\n"),
				Dir("usr"), Dir("usr/bin"), Exec("usr/bin/hello", "#!/bin/sh\necho hello\n"),
				Symlink("usr/bin/hi", "hello"), Hardlink("usr/bin/hello2", "usr/bin/hello"),
			},
			{
				Dir("data"), BigFile("data/big.txt", bigBytes, 1),
				File("etc/hostname", "overwritten\n"),
			},
			{
				Whiteout("etc/motd"), Dir("app"), File("app/main.py", "print('hi')\n"),
				Dir("app/empty"),
			},
		},
		Env:        []string{"PATH=/usr/bin:/bin", "CLIP_TEST=1"},
		Cmd:        []string{"/usr/bin/hello"},
		WorkingDir: "/app",
		User:       "1000",
		Labels:     map[string]string{"org.example.test": "yes"},
	}
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// WriteLayout writes img as an OCI image layout at dir (created), tagged tag.
// It returns the manifest digest.
func WriteLayout(t testing.TB, dir, tag string, img Image) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(b []byte) (string, int64) {
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", h), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return "sha256:" + h, int64(len(b))
	}
	var layers []descriptor
	var diffIDs []string
	for i, entries := range img.Layers {
		raw, err := tarLayer(entries)
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		sum := sha256.Sum256(raw)
		diffIDs = append(diffIDs, "sha256:"+hex.EncodeToString(sum[:]))
		var gz bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
		if _, err := zw.Write(raw); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		d, n := put(gz.Bytes())
		layers = append(layers, descriptor{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: d, Size: n})
	}
	cfg := map[string]any{
		"created":      "2024-01-02T03:04:05Z",
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config": map[string]any{
			"Env": img.Env, "Cmd": img.Cmd, "Entrypoint": img.Entrypoint,
			"WorkingDir": img.WorkingDir, "User": img.User, "Labels": img.Labels,
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	}
	cd, cn := put(mustJSON(t, cfg))
	manifest := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: cd, Size: cn},
		"layers":        layers,
	}
	md, mn := put(mustJSON(t, manifest))
	index := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{
			MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: md, Size: mn,
			Annotations: map[string]string{"org.opencontainers.image.ref.name": tag},
		}},
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), mustJSON(t, index), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return md
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func tarLayer(entries []Entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, e := range entries {
		h := &tar.Header{Name: e.Path, Typeflag: e.Type, Mode: e.Mode, ModTime: mtime, Format: tar.FormatPAX}
		switch e.Type {
		case tar.TypeReg:
			h.Size = int64(len(e.Data))
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeSymlink, tar.TypeLink:
			h.Linkname = e.Target
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if e.Type == tar.TypeReg {
			if _, err := tw.Write(e.Data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Node is one entry of a file tree, as compared between expectation and mount.
type Node struct {
	Kind   string // "dir", "file", "symlink"
	Perm   os.FileMode
	Size   int64
	SHA256 string // regular files
	Target string // symlinks
}

func (n Node) String() string {
	return fmt.Sprintf("%s %v size=%d sha=%.12s target=%q", n.Kind, n.Perm, n.Size, n.SHA256, n.Target)
}

// Tree maps "/path" to its node (the root is left out).
type Tree map[string]Node

// Expected applies the layers of img in order (whiteouts, opaque directories,
// hardlinks) and returns the tree a mount of it must show.
func Expected(img Image) Tree {
	tr := Tree{}
	for _, layer := range img.Layers {
		for _, e := range layer {
			p := "/" + strings.TrimSuffix(e.Path, "/")
			base := path.Base(p)
			if base == ".wh..wh..opq" {
				tr.removeUnder(path.Dir(p))
				continue
			}
			if strings.HasPrefix(base, ".wh.") {
				victim := path.Join(path.Dir(p), strings.TrimPrefix(base, ".wh."))
				delete(tr, victim)
				tr.removeUnder(victim)
				continue
			}
			switch e.Type {
			case tar.TypeDir:
				tr[p] = Node{Kind: "dir", Perm: os.FileMode(e.Mode)}
			case tar.TypeReg:
				sum := sha256.Sum256(e.Data)
				tr[p] = Node{Kind: "file", Perm: os.FileMode(e.Mode), Size: int64(len(e.Data)), SHA256: hex.EncodeToString(sum[:])}
			case tar.TypeSymlink:
				tr[p] = Node{Kind: "symlink", Target: e.Target, Size: int64(len(e.Target))}
			case tar.TypeLink:
				tr[p] = tr["/"+e.Target]
			}
		}
	}
	return tr
}

func (tr Tree) removeUnder(dir string) {
	for k := range tr {
		if strings.HasPrefix(k, dir+"/") {
			delete(tr, k)
		}
	}
}

// Snapshot walks root (a mount point) and reads every file.
func Snapshot(t testing.TB, root string) Tree {
	t.Helper()
	tr := Tree{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(p, root)
		if rel == "" {
			return nil
		}
		n := Node{Perm: fi.Mode().Perm()}
		switch {
		case fi.IsDir():
			n.Kind = "dir"
		case fi.Mode()&os.ModeSymlink != 0:
			n.Kind, n.Perm, n.Size = "symlink", 0, fi.Size()
			if n.Target, err = os.Readlink(p); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			n.Kind, n.Size, n.SHA256 = "file", int64(len(b)), hex.EncodeToString(sum[:])
			if n.Size != fi.Size() {
				return fmt.Errorf("%s: read %d bytes, stat says %d", p, n.Size, fi.Size())
			}
		default:
			n.Kind = fi.Mode().Type().String()
		}
		tr[rel] = n
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", root, err)
	}
	return tr
}

// Diff lists the differences between want and got, sorted; empty if equal.
func Diff(want, got Tree) []string {
	var out []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			out = append(out, "missing "+p+": "+w.String())
		case g.Kind == "symlink" && w.Kind == "symlink":
			if g.Target != w.Target {
				out = append(out, fmt.Sprintf("%s: want %s, got %s", p, w, g))
			}
		case g != w:
			out = append(out, fmt.Sprintf("%s: want %s, got %s", p, w, g))
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

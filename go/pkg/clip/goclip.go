package clip

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/beam-cloud/clip/go/pkg/common"
)

// The Go clip's archive format (its pkg/common/format.go), written only where
// beta9 needs an archive our format cannot hold: CreateRemoteArchive with an
// OCIStorageInfo. libclip reads this format (src/goclip/).
var goclipStartBytes = [9]byte{0x89, 'C', 'L', 'I', 'P', 0x0d, 0x0a, 0x1a, 0x0a}

const goclipHeaderLength = 54

// goclipHeader is the Go clip's ClipArchiveHeader, little endian.
type goclipHeader struct {
	StartBytes            [9]byte
	ClipFileFormatVersion uint8
	IndexLength           int64
	IndexPos              int64
	StorageInfoLength     int64
	StorageInfoPos        int64
	StorageInfoType       [12]byte
}

// goclipOwner, goclipAttr, goclipNode: the Go clip's ClipNode with go-fuse's
// fuse.Attr, field for field (gob matches fields by name).
type goclipOwner struct{ Uid, Gid uint32 }

type goclipAttr struct {
	Ino, Size, Blocks, Atime, Mtime, Ctime uint64
	Atimensec, Mtimensec, Ctimensec        uint32
	Mode, Nlink                            uint32
	Owner                                  goclipOwner
	Rdev, Blksize, Padding                 uint32
}

type goclipNode struct {
	NodeType    string
	Path        string
	Attr        goclipAttr
	Target      string
	ContentHash string
	DataPos     int64
	DataLen     int64
}

type goclipStorageInfoWrapper struct {
	Type string
	Data []byte
}

// writeGoclipOCI writes, atomically, a Go-clip archive naming oci.
func writeGoclipOCI(oci common.OCIStorageInfo, path string) error {
	var index bytes.Buffer
	root := []*goclipNode{{NodeType: "dir", Path: "/", Attr: goclipAttr{Ino: 1, Mode: syscall.S_IFDIR | 0o755, Nlink: 2}}}
	if err := gob.NewEncoder(&index).Encode(root); err != nil {
		return fmt.Errorf("clip: encoding a Go-clip index: %w", err)
	}
	var data bytes.Buffer
	if err := gob.NewEncoder(&data).Encode(oci); err != nil {
		return fmt.Errorf("clip: encoding OCI storage info: %w", err)
	}
	var wrapper bytes.Buffer
	w := goclipStorageInfoWrapper{Type: oci.Type(), Data: data.Bytes()}
	if err := gob.NewEncoder(&wrapper).Encode(w); err != nil {
		return fmt.Errorf("clip: encoding storage info: %w", err)
	}
	h := goclipHeader{
		StartBytes:            goclipStartBytes,
		ClipFileFormatVersion: 1,
		IndexLength:           int64(index.Len()),
		IndexPos:              goclipHeaderLength,
		StorageInfoLength:     int64(wrapper.Len()),
		StorageInfoPos:        goclipHeaderLength + int64(index.Len()),
	}
	copy(h.StorageInfoType[:], oci.Type())
	var out bytes.Buffer
	if err := binary.Write(&out, binary.LittleEndian, h); err != nil {
		return fmt.Errorf("clip: encoding a Go-clip header: %w", err)
	}
	out.Write(index.Bytes())
	out.Write(wrapper.Bytes())
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-clip-*")
	if err != nil {
		return &Error{Code: CodeError, Message: fmt.Sprintf("%s: %v", path, err), cause: err}
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(out.Bytes()); err != nil {
		tmp.Close()
		return &Error{Code: CodeError, Message: fmt.Sprintf("writing %s: %v", tmp.Name(), err), cause: err}
	}
	if err := tmp.Close(); err != nil {
		return &Error{Code: CodeError, Message: fmt.Sprintf("writing %s: %v", tmp.Name(), err), cause: err}
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return &Error{Code: CodeError, Message: fmt.Sprintf("%s: %v", tmp.Name(), err), cause: err}
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return &Error{Code: CodeError, Message: fmt.Sprintf("%s: %v", path, err), cause: err}
	}
	return nil
}

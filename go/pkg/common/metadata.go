package common

import (
	"encoding/json"
	"errors"
	"time"
)

// ErrFileHeaderMismatch is matched (errors.Is) by the error ExtractMetadata returns
// for a file that is not a .clip archive or whose header is corrupt.
var ErrFileHeaderMismatch = errors.New("unexpected file header")

// StorageMode names where a mounted archive reads file bytes from.
type StorageMode string

// Storage modes: StorageModeOCI for index-only archives (CreateFromOCIImage),
// StorageModeLocal for self-contained v1 archives (CreateArchive), StorageModeS3 for
// metadata-only v1 archives whose data is an object in S3 (CreateAndUploadArchive).
const (
	StorageModeLocal StorageMode = "local"
	StorageModeS3    StorageMode = "s3"
	StorageModeOCI   StorageMode = "oci"
)

// ClipArchiveMetadata is what ExtractMetadata reads from an archive. It is handed
// back to MountArchive as MountOptions.Metadata.
type ClipArchiveMetadata struct {
	Header ClipArchiveHeader
	// StorageInfo says where file bytes come from: an OCIStorageInfo value for an
	// index-only archive, an S3StorageInfo value for a .rclip, nil for a
	// self-contained v1 archive (its data is in the file).
	StorageInfo ClipStorageInfo
}

// ClipArchiveHeader describes the archive file itself.
type ClipArchiveHeader struct {
	FormatVersion int    // on-disk format version (docs/FORMAT.md)
	CreatedBy     string // the library version that wrote it ("clip 0.1.0")
	Source        string // where the image was read from when indexing
	ArchiveSize   int64  // bytes
	// Path is the file ExtractMetadata read; CreateRemoteArchive and MountArchive
	// (with StorageModeOverride) read the archive's tree from it.
	Path string
}

// ClipStorageInfo describes where a mount fetches layer bytes from.
type ClipStorageInfo interface {
	Type() string
	Encode() ([]byte, error)
}

// S3StorageInfo names the S3 object holding the data of a v1 archive: the
// storage info of a .rclip, and the target of CreateAndUploadArchive. Its methods
// have value receivers: both S3StorageInfo and *S3StorageInfo satisfy
// ClipStorageInfo.
type S3StorageInfo struct {
	Bucket         string
	Region         string
	Key            string
	Endpoint       string
	ForcePathStyle bool
}

// Type returns "s3".
func (s S3StorageInfo) Type() string { return string(StorageModeS3) }

// Encode returns the JSON encoding of s.
func (s S3StorageInfo) Encode() ([]byte, error) { return json.Marshal(s) }

// OCIStorageInfo says which registry image an index-only archive reads its layers
// from. Its methods have value receivers: both OCIStorageInfo and *OCIStorageInfo
// satisfy ClipStorageInfo.
type OCIStorageInfo struct {
	RegistryURL string   // host[:port], no scheme
	Repository  string   // repository path within the registry
	Reference   string   // the manifest digest the archive was indexed from
	Layers      []string // compressed layer digests, bottom to top
	// DecompressedHashByLayer maps a layer digest to the sha256 hex (no "sha256:")
	// of the layer's whole decompressed tar stream, that is, its diff_id.
	DecompressedHashByLayer map[string]string
	ImageMetadata           *ImageMetadata `json:"ImageMetadata,omitempty"`
	// GzipIdxByLayer and ZstdIdxByLayer are the Go clip's decompression
	// checkpoints, set only for archives it wrote (offsets only: libclip serves those
	// by indexing the image again). Our archives keep their checkpoints inside.
	GzipIdxByLayer map[string]*GzipIndex
	ZstdIdxByLayer map[string]*ZstdIndex
}

// GzipCheckpoint is one offset pair of the Go clip's gzip index.
type GzipCheckpoint struct {
	COff int64 // compressed offset
	UOff int64 // uncompressed offset
}

// GzipIndex is the Go clip's gzip index of one layer.
type GzipIndex struct {
	LayerDigest string
	Checkpoints []GzipCheckpoint
}

// ZstdFrame is one frame of the Go clip's zstd index.
type ZstdFrame struct {
	COff, CLen, UOff, ULen int64
}

// ZstdIndex is the Go clip's zstd index of one layer.
type ZstdIndex struct {
	LayerDigest string
	Frames      []ZstdFrame
}

// Type returns "oci".
func (o OCIStorageInfo) Type() string { return string(StorageModeOCI) }

// Encode returns the JSON encoding of o.
func (o OCIStorageInfo) Encode() ([]byte, error) { return json.Marshal(o) }

// LayerMetadata describes one layer of an image.
type LayerMetadata struct {
	MIMEType    string            `json:"MIMEType"`
	Digest      string            `json:"Digest"`
	Size        int64             `json:"Size"`
	Annotations map[string]string `json:"Annotations,omitempty"`
}

// ImageMetadata is the image's identity and runtime configuration, recorded in the
// archive at indexing time so that nothing is fetched to start a container.
type ImageMetadata struct {
	Name          string              `json:"Name"`
	Digest        string              `json:"Digest"`
	RepoTags      []string            `json:"RepoTags,omitempty"`
	Created       time.Time           `json:"Created"`
	DockerVersion string              `json:"DockerVersion,omitempty"`
	Labels        map[string]string   `json:"Labels,omitempty"`
	Architecture  string              `json:"Architecture"`
	Os            string              `json:"Os"`
	Variant       string              `json:"Variant,omitempty"`
	Author        string              `json:"Author,omitempty"`
	Env           []string            `json:"Env,omitempty"`
	Cmd           []string            `json:"Cmd,omitempty"`
	Entrypoint    []string            `json:"Entrypoint,omitempty"`
	User          string              `json:"User,omitempty"`
	WorkingDir    string              `json:"WorkingDir,omitempty"`
	ExposedPorts  map[string]struct{} `json:"ExposedPorts,omitempty"`
	Volumes       map[string]struct{} `json:"Volumes,omitempty"`
	StopSignal    string              `json:"StopSignal,omitempty"`
	Layers        []string            `json:"Layers"`
	LayersData    []LayerMetadata     `json:"LayersData"`
}

package clip

import (
	"context"
	"time"

	"github.com/beam-cloud/clip/go/pkg/common"
	"github.com/beam-cloud/clip/go/pkg/storage"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// MountOptions configures MountArchive. Fields marked "accepted, not used" exist so
// that callers written for the Go clip compile unchanged; docs/GO.md lists them.
type MountOptions struct {
	// Context cancels content preparation (PrepareArchiveContent); nil means
	// Background.
	Context context.Context
	// ArchivePath is the .clip archive to mount.
	ArchivePath string
	// Metadata is what ExtractMetadata returned for ArchivePath (or, with
	// StorageModeOverride, for its .rclip). It may be nil: it is then read from
	// ArchivePath. Only its storage kind and Header.Path are used; the tree is read
	// by libclip from the archive file.
	Metadata *common.ClipArchiveMetadata
	// MountPoint is created if missing.
	MountPoint string
	// CachePath is, for an index-only (OCI) archive, the span cache directory,
	// shared by mounts and processes ("" = clip's default: $CLIP_CACHE_DIR, else
	// ~/.cache/clip). For a v1 archive the worker passes a file path here (the Go
	// clip's local copy of the data): it is not used, and v1 mounts use clip's
	// default cache directory.
	CachePath string
	// RegistryCredProvider, if it is a common.RegistryCredentialProvider, is asked
	// for credentials when layer bytes are fetched from the registry.
	RegistryCredProvider interface{}
	// ReadTraceObserver, if set, is called for every lazy read, on FUSE threads.
	ReadTraceObserver common.ReadTraceObserver
	// LocalLayoutPath, if set, serves layer bytes from this OCI image layout instead
	// of the registry the archive names (an addition of this package).
	LocalLayoutPath string

	// StorageInfo, for a v1 .rclip, names the S3 object to read the data from
	// instead of the one the archive records (a *common.S3StorageInfo or a
	// common.S3StorageInfo; other values are ignored, as by the Go clip).
	StorageInfo common.ClipStorageInfo
	// Credentials are the S3 credentials of a v1 .rclip mount; a nil S3 means the
	// standard AWS_* variables.
	Credentials storage.ClipStorageCredentials
	// StorageModeOverride == common.StorageModeLocal mounts a v1 archive from the
	// full .clip at ArchivePath, Metadata being that of its .rclip (or nil): no S3
	// request is made.
	StorageModeOverride common.StorageMode

	// ContentCache, with ContentCacheAvailable, is the cluster content cache an
	// index-only mount reads through before the registry: whole uncompressed
	// layers under their DecompressedHashByLayer values, read by range and
	// verified; a layer it lacks is stored into it in the background after a
	// registry read. Its optional extensions (ContentCacheExistsWithSize,
	// ContentCacheReadInto, ContentCacheClientLocalPageFileViews,
	// ContentCacheStoreLocalPath) are used when implemented. A nil or typed-nil
	// cache, or ContentCacheAvailable false, means none. Its errors
	// (ErrContentCacheMiss, ErrContentCacheUnavailable, others) never fail a
	// read: the registry serves it; a read waits for it at most
	// ContentCacheTimeout.
	ContentCache          storage.ContentCache
	ContentCacheAvailable bool
	// ContentCacheTimeout is the longest a read waits for the content cache
	// (0: 2 s). An addition of this package.
	ContentCacheTimeout time.Duration
	// ContentCacheReadOnly: never store layers into the content cache. An
	// addition of this package.
	ContentCacheReadOnly bool
	// CacheMaxBytes limits CachePath's span cache (0: 10 GiB); CacheMinFreeBytes
	// is the free space it leaves on its file system (0: 10% of it, at most
	// 16 GiB), evicting and serving from memory to keep it. Additions of this
	// package: beta9's image-cache eviction never sees the span cache (it lives
	// in a subdirectory), so clip bounds it itself.
	CacheMaxBytes     int64
	CacheMinFreeBytes int64
	// StartupProfilePath, if set, is a startup profile file (from
	// Server.WriteStartupProfile or `clipctl mount --record`) replayed at mount
	// instead of the archive's embedded one: the spans the recorded start read
	// are fetched in parallel, ahead of the workload. A file that cannot be read,
	// is not a profile or names other layers is ignored with a logged warning.
	// NoStartupProfile replays none. StartupProfileConcurrency is how many spans
	// the replay fetches at once (0: 8). RecordStartupProfile records the spans
	// reads touch, for Server.WriteStartupProfile. Additions of this package.
	StartupProfilePath        string
	NoStartupProfile          bool
	StartupProfileConcurrency int
	RecordStartupProfile      bool
	// UseCheckpoints is accepted, not used: checkpoints are always used.
	UseCheckpoints bool
	// PrepareConcurrency > 0 makes MountArchive call PrepareArchiveContent
	// first (with PrepareProgress and Context); see there.
	PrepareConcurrency int
	PrepareProgress    func(storage.PrepareProgress)
}

// CreateFromOCIImageOptions configures CreateFromOCIImage.
type CreateFromOCIImageOptions struct {
	// ImageRef is the registry reference read from, and recorded in the archive as
	// where mounts fetch layers from (unless StorageImageRef is set).
	ImageRef string
	// StorageImageRef, if set, is recorded instead of ImageRef.
	StorageImageRef string
	// LocalLayoutPath, if set, is an OCI image layout read instead of the registry;
	// it must hold one image. The archive still records ImageRef/StorageImageRef.
	LocalLayoutPath string
	// OutputPath receives the index-only archive (written atomically: on failure or
	// cancellation nothing is left there).
	OutputPath string
	// CheckpointMiB is the uncompressed span between checkpoints; 0 means 2.
	CheckpointMiB int64
	// CredProvider, if it is a common.RegistryCredentialProvider, is asked for
	// registry credentials.
	CredProvider interface{}
	// ProgressChan, if set, receives OCIIndexProgress events. Sends block (they give
	// up when ctx is done); the channel is never closed by this package and nothing
	// is sent after CreateFromOCIImage returns.
	ProgressChan chan<- OCIIndexProgress
	// Platform picks from a multi-platform image; nil means linux/runtime.GOARCH.
	Platform *v1.Platform
	// IndexConcurrency is how many layers are indexed at once; <=0 means 4.
	IndexConcurrency int

	// LayerIndexCache, if set, keeps per-layer index artifacts: a layer found
	// there is not read at all (progress Source LayerSourceIndexCache) and the
	// archive is the same. A *storage.DiskLayerIndexCache is used by libclip
	// directly; any other implementation is called from indexing goroutines
	// (concurrently) under keys naming libclip's artifact version and span size
	// ("clip-layer-index/rs1/span2097152/sha256_<hex>", never the Go clip's
	// "clip-layer-index/v1/..." keys). GetLayerIndex's (nil, nil) and errors are
	// misses; PutLayerIndex errors never fail the call. A typed nil means none.
	LayerIndexCache storage.LayerIndexCache

	// ContentCache, if set (a typed nil means none), is a source and a warm
	// target of compressed layer blobs, keyed by the bare hex of the layer
	// digest: a blob it holds (ContentCacheExistsWithSize with the layer's size;
	// without that extension it is never read) is read from it by range, the
	// digest verified as it streams, and the progress Source is
	// LayerSourceContentCache; any failure reads the layer from its source
	// instead. A blob read from the registry or layout is stored into it
	// afterwards, best effort, spooled in ContentCacheDir ("" = the system's
	// temporary directory) while it is indexed.
	ContentCache    storage.ContentCache
	ContentCacheDir string
}

// Where a layer's bytes came from, in OCIIndexProgress.Source.
const (
	LayerSourceIndexCache   = "index-cache"
	LayerSourceContentCache = "content-cache"
	LayerSourceLocalLayout  = "local-layout"
	LayerSourceRegistry     = "registry"
)

// Stages of OCIIndexProgress. Per layer: StageStarting, then StageProgress events
// (at most one every 500 ms), then StageCompleted. Layers interleave.
const (
	StageStarting  = "starting"
	StageProgress  = "progress"
	StageCompleted = "completed"
)

// OCIIndexProgress is a progress event of CreateFromOCIImage.
type OCIIndexProgress struct {
	LayerIndex      int    // 1-based
	TotalLayers     int    // layers in the image
	LayerDigest     string // compressed digest
	Stage           string // StageStarting, StageProgress or StageCompleted
	FilesIndexed    int    // entries in the layer ("completed" only)
	Message         string // human-readable
	CompletedLayers int    // layers completed so far ("completed" only)
	Source          string // a LayerSource* value
	// BytesProcessed is the uncompressed bytes so far; on "completed" the total.
	BytesProcessed int64
	// BytesTotal is the uncompressed size ("completed" only).
	BytesTotal int64
	// Compressed bytes read so far, and the layer's compressed size.
	CompressedBytesProcessed, CompressedBytesTotal int64
}

// CreateOptions configures CreateArchive and CreateAndUploadArchive.
type CreateOptions struct {
	// InputPath is the directory tree to archive (a umoci bundle: the whole tree
	// is archived).
	InputPath string
	// OutputPath receives the archive: the self-contained .clip (CreateArchive),
	// or the metadata-only .rclip (CreateAndUploadArchive). Written atomically.
	OutputPath string
	// Credentials are the S3 credentials of CreateAndUploadArchive; a nil S3 means
	// the standard AWS_* variables.
	Credentials storage.ClipStorageCredentials
	// ProgressChan, if set, receives CreateAndUploadArchive's upload progress in
	// percent (0 to 100, repeats possible). Sends block (they give up when ctx is
	// done); the channel is never closed by this package and nothing is sent
	// after the call returns.
	ProgressChan chan<- int
	// ContentCache is accepted, not used (see docs/GO.md).
	ContentCache storage.ContentCache
}

// ClipArchiverOptions configures ClipArchiver.Create.
type ClipArchiverOptions struct {
	// SourcePath is the directory tree to archive.
	SourcePath string
	// OutputFile receives the self-contained .clip (OutputPath if empty).
	OutputFile string
	// Accepted, not used: archives are always compressed; ArchivePath and
	// OutputPath served extraction in the Go clip (OutputPath is Create's output
	// when OutputFile is empty).
	Compress     bool
	ArchivePath  string
	OutputPath   string
	ContentCache storage.ContentCache
}

// ClipArchiver reads archive metadata and writes v1 archives.
type ClipArchiver struct{}

// NewClipArchiver returns a ClipArchiver.
func NewClipArchiver() *ClipArchiver { return &ClipArchiver{} }

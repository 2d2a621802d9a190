// Package storage holds the storage-side interfaces of the clip packages: the content
// cache and layer-index cache a caller may hand in, and storage credentials. It
// mirrors the pkg/storage package of the Go clip that the beta9 worker imports today
// so that code naming these types compiles unchanged. docs/GO.md says which of them
// the Rust-backed clip honours today. DiskLayerIndexCache is libclip's disk cache
// (through cgo); everything else here is plain Go.
package storage

import (
	"context"
	"errors"
)

// Content-cache errors, classified by callers with errors.Is.
var (
	ErrContentCacheMiss        = errors.New("content cache miss")
	ErrContentCacheUnavailable = errors.New("content cache unavailable")
)

// ContentCache is a content-addressed blob cache (beta9's cache cluster).
type ContentCache interface {
	GetContent(hash string, offset int64, length int64, opts struct{ RoutingKey string }) ([]byte, error)
	StoreContent(chunks chan []byte, hash string, opts struct{ RoutingKey string }) (string, error)
}

// ContentCacheReadInto is an optional ContentCache extension.
type ContentCacheReadInto interface {
	ReadContentInto(hash string, offset int64, dest []byte, opts struct{ RoutingKey string }) (int64, error)
}

// ContentCacheExists is an optional ContentCache extension.
type ContentCacheExists interface {
	ContentExists(hash string, opts struct{ RoutingKey string }) (bool, error)
}

// ContentCacheExistsWithSize is an optional ContentCache extension.
type ContentCacheExistsWithSize interface {
	ContentExistsWithSize(hash string, size int64, opts struct{ RoutingKey string }) (bool, error)
}

// ContentCacheStoreLocalPath is an optional ContentCache extension.
type ContentCacheStoreLocalPath interface {
	StoreContentFromLocalPath(path string, hash string, opts struct{ RoutingKey string }) (string, error)
}

// ContentCacheStream is an optional ContentCache extension.
type ContentCacheStream interface {
	GetContentStream(hash string, opts struct{ RoutingKey string }) (<-chan []byte, int64, error)
}

// ClientLocalPageFileView is a byte range of a file on this host holding cached content.
type ClientLocalPageFileView struct {
	Path   string
	Offset int64
	Length int
}

// ContentCacheClientLocalPageFileViews is an optional ContentCache extension.
type ContentCacheClientLocalPageFileViews interface {
	ClientLocalPageFileViews(hash string, offset int64, length int64, opts struct{ RoutingKey string }) ([]ClientLocalPageFileView, error)
}

// LayerIndexCache stores per-layer index artifacts. GetLayerIndex returns (nil, nil)
// on a miss (an error is a miss too); PutLayerIndex failures never fail a build.
// Both may be called from several goroutines at once (layers are indexed in
// parallel). DiskLayerIndexCache is one; any other works as a key → bytes store.
type LayerIndexCache interface {
	GetLayerIndex(ctx context.Context, key string) ([]byte, error)
	PutLayerIndex(ctx context.Context, key string, data []byte) error
}

// ClipStorageCredentials are credentials for v1 S3 storage (uploads and mounts of
// .rclip archives).
type ClipStorageCredentials struct {
	// S3 is the access key pair; nil (or a pair with an empty key) means the
	// standard AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN
	// variables.
	S3 *S3ClipStorageCredentials
}

// S3ClipStorageCredentials are an S3 access key pair. They are handed to libclip
// for the call (or the mount) and never logged.
type S3ClipStorageCredentials struct {
	AccessKey string
	SecretKey string
}

// PrepareProgress reports content preparation (materialising layers before a mount).
type PrepareProgress struct {
	Completed int
	Total     int
	Bytes     int64
}

// PrepareOptions are the options of a ContentPreparer: how many layers at once,
// and a progress callback (called serially).
type PrepareOptions struct {
	Concurrency int
	Progress    func(PrepareProgress)
}

// ContentPreparer is storage that can fetch all of its content ahead of reads.
// clip.PrepareArchiveContent does this for index-only archives; the interface is
// kept for code written against the Go clip's storage package.
type ContentPreparer interface {
	Prepare(ctx context.Context, opts PrepareOptions) error
}

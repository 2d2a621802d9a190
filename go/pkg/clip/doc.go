// Package clip indexes OCI images into small index-only .clip archives and mounts
// them read-only with FUSE, fetching file bytes lazily from the image's registry
// (HTTP Range) or a local OCI layout.
//
// It is a thin cgo layer over libclip (the Rust library, linked through
// pkg-config's clip.pc) and mirrors the pkg/clip package of the Go clip that the
// beta9 worker imports today, call for call: SetLogLevel, CreateFromOCIImage,
// CreateIndexOnlyArchiveFromOCILayout, NewClipArchiver().ExtractMetadata and
// MountArchive. docs/GO.md is the migration guide.
//
// Long calls take a context.Context, which cancels them through libclip's cancel
// token. Go values reach libclip's callbacks only as runtime/cgo Handles. Errors are
// *Error values that errors.Is matches against the Err* sentinels.
package clip

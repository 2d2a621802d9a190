package clip

/*
#include <stdlib.h>
#include "callbacks.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/beam-cloud/clip/go/pkg/common"
	"github.com/beam-cloud/clip/go/pkg/storage"
)

// CreateArchive archives the directory tree at InputPath into a self-contained
// (v1) archive at OutputPath, which carries the file contents: the worker's
// `registryStore: local` build. Hard links, xattrs, devices, fifos, modes, owners
// and mtimes are kept; symlinks are never followed. Nothing is left at OutputPath
// on failure.
func CreateArchive(options CreateOptions) error {
	return pack(context.Background(), options.InputPath, options.OutputPath)
}

// CreateAndUploadArchive archives the tree at InputPath (as CreateArchive does,
// into a temporary file), uploads that archive to the S3 object si names, and
// writes the metadata-only .rclip naming it to OutputPath: the worker's
// `registryStore: s3` build. si must be a *common.S3StorageInfo. ProgressChan, if
// set, gets the upload percent. Nothing is left at OutputPath on failure;
// cancelling ctx stops the call promptly.
func CreateAndUploadArchive(ctx context.Context, options CreateOptions, si common.ClipStorageInfo) error {
	if ctx == nil {
		ctx = context.Background()
	}
	s3, ok := si.(*common.S3StorageInfo)
	if !ok || s3 == nil {
		return invalid(fmt.Sprintf("CreateAndUploadArchive needs a *common.S3StorageInfo, got %T", si))
	}
	if s3.Bucket == "" || s3.Key == "" {
		return invalid("CreateAndUploadArchive: S3StorageInfo needs a Bucket and a Key")
	}
	if options.OutputPath == "" {
		return invalid("CreateOptions.OutputPath is empty")
	}
	tmp, err := os.MkdirTemp("", "clip-upload-*")
	if err != nil {
		return fmt.Errorf("clip: temporary directory for the archive: %w", err)
	}
	defer os.RemoveAll(tmp)
	full := filepath.Join(tmp, "archive.clip")
	if err := pack(ctx, options.InputPath, full); err != nil {
		return err
	}
	return upload(ctx, full, options.OutputPath, s3, options.Credentials, options.ProgressChan)
}

// Create archives the tree at SourcePath into a self-contained (v1) archive at
// OutputFile (OutputPath if OutputFile is empty), as CreateArchive does.
func (ca *ClipArchiver) Create(opts ClipArchiverOptions) error {
	out := opts.OutputFile
	if out == "" {
		out = opts.OutputPath
	}
	return pack(context.Background(), opts.SourcePath, out)
}

// CreateRemoteArchive writes to path a metadata-only .rclip for the archive meta
// was read from (by ExtractMetadata: a v1 .clip or .rclip), naming the S3 object
// storageInfo gives (a *common.S3StorageInfo or a common.S3StorageInfo) as where
// its data lives. Nothing is uploaded.
//
// With a common.OCIStorageInfo (value or pointer) it writes what the Go clip
// wrote: an archive in the Go clip's format whose storage info is that value, so
// ExtractMetadata gives it back unchanged (Layers, DecompressedHashByLayer,
// ImageMetadata, ...) and a mount indexes the image it names. Its index holds the
// root directory only: the files of an OCI image live in its layers.
func (ca *ClipArchiver) CreateRemoteArchive(storageInfo common.ClipStorageInfo, meta *common.ClipArchiveMetadata, path string) error {
	if meta == nil {
		return invalid("CreateRemoteArchive: metadata is nil")
	}
	if meta.Header.Path == "" {
		return invalid("CreateRemoteArchive: the metadata was not read by ExtractMetadata (it names no archive)")
	}
	if path == "" {
		return invalid("CreateRemoteArchive: the output path is empty")
	}
	s3 := s3Info(storageInfo)
	switch {
	case s3 == nil && storageType(storageInfo) == "":
		return invalid(fmt.Sprintf("CreateRemoteArchive: storage info is nil (%T)", storageInfo))
	case s3 == nil:
		if oci := ociInfo(storageInfo); oci != nil {
			return writeGoclipOCI(*oci, path)
		}
		return &Error{Code: CodeUnsupported, Message: fmt.Sprintf(
			"CreateRemoteArchive: storage info %T is not supported; only S3 and OCI are", storageInfo)}
	}
	if s3.Bucket == "" || s3.Key == "" {
		return invalid("CreateRemoteArchive: S3StorageInfo needs a Bucket and a Key")
	}
	var cs cstrings
	defer cs.free()
	o, err := s3Options(&cs, s3, storage.ClipStorageCredentials{})
	if err != nil {
		return err
	}
	defer cFree(o)
	return call(func() C.int {
		return C.clip_write_remote(cs.bytes(meta.Header.Path), cs.bytes(path), o)
	})
}

// ociInfo returns the OCI storage info in si (a non-nil pointer or a value), or nil.
func ociInfo(si common.ClipStorageInfo) *common.OCIStorageInfo {
	switch s := si.(type) {
	case *common.OCIStorageInfo:
		return s
	case common.OCIStorageInfo:
		return &s
	}
	return nil
}

// s3Info returns the S3 storage info in si (a non-nil pointer or a value), or nil.
func s3Info(si common.ClipStorageInfo) *common.S3StorageInfo {
	switch s := si.(type) {
	case *common.S3StorageInfo:
		return s
	case common.S3StorageInfo:
		return &s
	}
	return nil
}

// storageType is si.Type(), or "" for nil (also a nil pointer of this package's
// storage info types, whose value methods would panic).
func storageType(si common.ClipStorageInfo) string {
	switch s := si.(type) {
	case nil:
		return ""
	case *common.S3StorageInfo:
		if s == nil {
			return ""
		}
	case *common.OCIStorageInfo:
		if s == nil {
			return ""
		}
	}
	return si.Type()
}

// s3Options returns C memory holding the S3 options for si (nil: no location,
// the archive's) and creds (nil or empty keys: the AWS_* variables); free it with
// cFree. Its strings belong to cs.
func s3Options(cs *cstrings, si *common.S3StorageInfo, creds storage.ClipStorageCredentials) (*C.clip_s3_options, error) {
	o := cAlloc[C.clip_s3_options]()
	if err := call(func() C.int { return C.clip_s3_options_init(o, C.CLIP_S3_OPTIONS_VERSION) }); err != nil {
		cFree(o)
		return nil, err
	}
	if si != nil {
		o.bucket = cs.str(si.Bucket)
		o.key = cs.str(si.Key)
		o.region = cs.str(si.Region)
		o.endpoint = cs.str(si.Endpoint)
		if si.ForcePathStyle {
			o.path_style = 1
		}
	}
	if c := creds.S3; c != nil && c.AccessKey != "" && c.SecretKey != "" {
		o.access_key = cs.str(c.AccessKey)
		o.secret_key = cs.str(c.SecretKey)
	}
	return o, nil
}

// pack archives dir into a v1 archive at out, cancelled with ctx.
func pack(ctx context.Context, dir, out string) error {
	if dir == "" {
		return invalid("the directory to archive (InputPath / SourcePath) is empty")
	}
	if out == "" {
		return invalid("the output path (OutputPath / OutputFile) is empty")
	}
	if err := ctx.Err(); err != nil {
		return &Error{Code: CodeCanceled, Message: "operation cancelled", cause: err}
	}
	var cs cstrings
	defer cs.free()
	opts := cAlloc[C.clip_pack_options]()
	defer cFree(opts)
	if err := call(func() C.int { return C.clip_pack_options_init(opts, C.CLIP_PACK_OPTIONS_VERSION) }); err != nil {
		return err
	}
	err := withCancel(ctx, func(tok *C.clip_cancel) error {
		opts.cancel = tok
		return call(func() C.int { return C.clip_pack_dir(cs.bytes(dir), cs.bytes(out), opts) })
	})
	return contextError(ctx, err)
}

// upload uploads the full archive at full to si and writes the .rclip to out.
func upload(ctx context.Context, full, out string, si *common.S3StorageInfo, creds storage.ClipStorageCredentials, progress chan<- int) error {
	if err := ctx.Err(); err != nil {
		return &Error{Code: CodeCanceled, Message: "operation cancelled", cause: err}
	}
	var cs cstrings
	defer cs.free()
	s3, err := s3Options(&cs, si, creds)
	if err != nil {
		return err
	}
	defer cFree(s3)
	opts := cAlloc[C.clip_upload_options]()
	defer cFree(opts)
	if err := call(func() C.int { return C.clip_upload_options_init(opts, C.CLIP_UPLOAD_OPTIONS_VERSION) }); err != nil {
		return err
	}
	cb := &callbacks{ctx: ctx, upload: progress}
	if progress != nil {
		h := newHandle(cb)
		defer deleteHandle(h)
		C.clipgo_set_upload_progress(opts, C.uintptr_t(h))
	}
	err = withCancel(ctx, func(tok *C.clip_cancel) error {
		opts.cancel = tok
		return call(func() C.int { return C.clip_upload(cs.bytes(full), cs.bytes(out), s3, opts) })
	})
	cb.rethrow()
	return contextError(ctx, err)
}

// contextError reports a call stopped because ctx is done (by the cancel token,
// or by a progress send that gave up) as the context's error.
func contextError(ctx context.Context, err error) error {
	var ce *Error
	if errors.As(err, &ce) && ctx.Err() != nil && (ce.Code == CodeCanceled || ce.Code == CodeCallback) {
		return &Error{Code: CodeCanceled, Message: ce.Message, cause: ctx.Err()}
	}
	return err
}

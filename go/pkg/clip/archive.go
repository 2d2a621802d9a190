package clip

/*
#include <stdlib.h>
#include <clip.h>
*/
import "C"

import (
	"os"

	"github.com/beam-cloud/clip/go/pkg/common"
)

// ExtractMetadata reads the metadata of the archive at archivePath, ours or one
// the Go clip wrote (gob format). Its StorageInfo is a common.OCIStorageInfo value
// for an index-only archive, a common.S3StorageInfo value for a v1 .rclip, and nil
// for a self-contained v1 archive. A file that is not a valid archive gives an
// error matching ErrFormat (ErrVersion for another format version) and
// common.ErrFileHeaderMismatch.
func (ca *ClipArchiver) ExtractMetadata(archivePath string) (*common.ClipArchiveMetadata, error) {
	var cs cstrings
	defer cs.free()
	var a *C.clip_archive
	if err := call(func() C.int { return C.clip_archive_open(&a, cs.bytes(archivePath)) }); err != nil {
		if e := err.(*Error); e.Code == CodeFormat || e.Code == CodeVersion {
			e.cause = common.ErrFileHeaderMismatch
		}
		return nil, err
	}
	defer C.clip_archive_close(a)
	var doc *C.char
	if err := call(func() C.int { return C.clip_archive_info(&doc, a) }); err != nil {
		return nil, err
	}
	defer C.clip_string_free(doc)
	var size int64
	if fi, err := os.Stat(archivePath); err == nil {
		size = fi.Size()
	}
	return metadataFromInfo([]byte(C.GoString(doc)), archivePath, size)
}

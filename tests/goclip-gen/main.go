// goclip-gen writes clip archives with the ORIGINAL Go clip
// (github.com/beam-cloud/clip, pinned in go.mod at the version the beta9
// worker uses) so that the Rust tests can read what production writes.
//
//	goclip-gen v1 SRC_DIR OUT
//	goclip-gen rclip SRC_DIR OUT --bucket B --key K --endpoint URL --region R [--path-style]
//	goclip-gen v2 IMAGE_REF OUT [--layout DIR]
//	goclip-gen meta ARCHIVE
//
// rclip takes its credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
// meta prints one JSON object: storage_type, storage, header and nodes (Go
// field names kept; nodes also carry PathHex/TargetHex, the raw bytes, since
// encoding/json replaces invalid UTF-8 with U+FFFD). Errors go to stderr with exit status 1.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/beam-cloud/clip/pkg/clip"
	"github.com/beam-cloud/clip/pkg/common"
	"github.com/beam-cloud/clip/pkg/storage"
	"github.com/rs/zerolog"
	"github.com/rs/zerolog/log"
)

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  goclip-gen v1 SRC_DIR OUT
  goclip-gen rclip SRC_DIR OUT --bucket B --key K --endpoint URL --region R [--path-style]
  goclip-gen v2 IMAGE_REF OUT [--layout DIR]
  goclip-gen meta ARCHIVE
`)
	os.Exit(1)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "goclip-gen: "+format+"\n", args...)
	os.Exit(1)
}

// parse splits args into positionals and flags (flags may follow positionals).
func parse(fs *flag.FlagSet, args []string, npos int) []string {
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			os.Exit(1)
		}
		args = fs.Args()
		if len(args) > 0 {
			pos = append(pos, args[0])
			args = args[1:]
		}
	}
	if len(pos) != npos {
		fail("%s: want %d arguments, got %d (%q)", fs.Name(), npos, len(pos), pos)
	}
	return pos
}

func main() {
	// The Go clip logs through zerolog (stdout by default); keep stdout for
	// meta's JSON and send logs to stderr.
	log.Logger = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Timestamp().Logger()
	if lvl := os.Getenv("GOCLIP_LOG"); lvl != "" {
		if err := clip.SetLogLevel(lvl); err != nil {
			fail("%v", err)
		}
	} else {
		zerolog.SetGlobalLevel(zerolog.WarnLevel)
	}

	if len(os.Args) < 2 {
		usage()
	}
	ctx := context.Background()
	cmd, args := os.Args[1], os.Args[2:]
	switch cmd {
	case "v1":
		fs := flag.NewFlagSet("v1", flag.ContinueOnError)
		p := parse(fs, args, 2)
		if err := clip.CreateArchive(clip.CreateOptions{InputPath: p[0], OutputPath: p[1]}); err != nil {
			fail("v1: %v", err)
		}
	case "rclip":
		fs := flag.NewFlagSet("rclip", flag.ContinueOnError)
		bucket := fs.String("bucket", "", "bucket")
		key := fs.String("key", "", "object key of the full .clip")
		endpoint := fs.String("endpoint", "", "S3 endpoint URL")
		region := fs.String("region", "", "region")
		pathStyle := fs.Bool("path-style", false, "path-style addressing")
		p := parse(fs, args, 2)
		if *bucket == "" || *key == "" {
			fail("rclip: --bucket and --key are required")
		}
		creds := storage.ClipStorageCredentials{S3: &storage.S3ClipStorageCredentials{
			AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"),
			SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY"),
		}}
		si := &common.S3StorageInfo{
			Bucket:         *bucket,
			Region:         *region,
			Key:            *key,
			Endpoint:       *endpoint,
			ForcePathStyle: *pathStyle,
		}
		err := clip.CreateAndUploadArchive(ctx, clip.CreateOptions{
			InputPath:   p[0],
			OutputPath:  p[1],
			Credentials: creds,
		}, si)
		if err != nil {
			fail("rclip: %v", err)
		}
	case "v2":
		fs := flag.NewFlagSet("v2", flag.ContinueOnError)
		layout := fs.String("layout", "", "read this OCI image layout instead of the registry")
		p := parse(fs, args, 2)
		err := clip.CreateFromOCIImage(ctx, clip.CreateFromOCIImageOptions{
			ImageRef:        p[0],
			OutputPath:      p[1],
			LocalLayoutPath: *layout,
			CheckpointMiB:   2,
		})
		if err != nil {
			fail("v2: %v", err)
		}
	case "meta":
		fs := flag.NewFlagSet("meta", flag.ContinueOnError)
		p := parse(fs, args, 1)
		if err := meta(p[0]); err != nil {
			fail("meta: %v", err)
		}
	default:
		usage()
	}
}

type node struct {
	Path        string
	PathHex     string // the path's raw bytes (encoding/json turns invalid UTF-8 into U+FFFD)
	NodeType    common.ClipNodeType
	Ino         uint64
	Mode        uint32
	Size        uint64
	Blocks      uint64
	Nlink       uint32
	Uid         uint32
	Gid         uint32
	Atime       uint64
	Atimensec   uint32
	Mtime       uint64
	Mtimensec   uint32
	Ctime       uint64
	Ctimensec   uint32
	Target      string
	TargetHex   string
	ContentHash string
	DataPos     int64
	DataLen     int64
	Remote      *common.RemoteRef
}

func meta(path string) error {
	m, err := clip.NewClipArchiver().ExtractMetadata(path)
	if err != nil {
		return err
	}
	h := m.Header
	header := map[string]any{
		"StartBytes":            hex.EncodeToString(h.StartBytes[:]),
		"ClipFileFormatVersion": h.ClipFileFormatVersion,
		"IndexLength":           h.IndexLength,
		"IndexPos":              h.IndexPos,
		"StorageInfoLength":     h.StorageInfoLength,
		"StorageInfoPos":        h.StorageInfoPos,
		"StorageInfoType":       strings.TrimRight(string(h.StorageInfoType[:]), "\x00"),
	}
	storageType := ""
	if m.StorageInfo != nil {
		storageType = m.StorageInfo.Type()
	}
	nodes := []node{}
	m.Index.Ascend(m.Index.Min(), func(a any) bool {
		n := a.(*common.ClipNode)
		nodes = append(nodes, node{
			Path:        n.Path,
			PathHex:     hex.EncodeToString([]byte(n.Path)),
			NodeType:    n.NodeType,
			Ino:         n.Attr.Ino,
			Mode:        n.Attr.Mode,
			Size:        n.Attr.Size,
			Blocks:      n.Attr.Blocks,
			Nlink:       n.Attr.Nlink,
			Uid:         n.Attr.Owner.Uid,
			Gid:         n.Attr.Owner.Gid,
			Atime:       n.Attr.Atime,
			Atimensec:   n.Attr.Atimensec,
			Mtime:       n.Attr.Mtime,
			Mtimensec:   n.Attr.Mtimensec,
			Ctime:       n.Attr.Ctime,
			Ctimensec:   n.Attr.Ctimensec,
			Target:      n.Target,
			TargetHex:   hex.EncodeToString([]byte(n.Target)),
			ContentHash: n.ContentHash,
			DataPos:     n.DataPos,
			DataLen:     n.DataLen,
			Remote:      n.Remote,
		})
		return true
	})
	out := map[string]any{
		"storage_type": storageType,
		"storage":      m.StorageInfo,
		"header":       header,
		"nodes":        nodes,
	}
	enc := json.NewEncoder(os.Stdout)
	return enc.Encode(out)
}

package clip

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/beam-cloud/clip/go/pkg/common"
)

// archiveInfo is the JSON document the C ABI describes an archive with
// (clip::archive::Info).
type archiveInfo struct {
	FormatVersion int    `json:"format_version"`
	CreatedBy     string `json:"created_by"`
	Source        string `json:"source"`
	StorageType   string `json:"storage_type"` // "oci", "local" (v1) or "s3" (v1 .rclip)
	S3            struct {
		Bucket    string `json:"bucket"`
		Key       string `json:"key"`
		Region    string `json:"region"`
		Endpoint  string `json:"endpoint"`
		PathStyle bool   `json:"path_style"`
	} `json:"s3"`
	Registry       string `json:"registry"`
	Repository     string `json:"repository"`
	Reference      string `json:"reference"`
	ManifestDigest string `json:"manifest_digest"`
	Platform       struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
	} `json:"platform"`
	Layers []struct {
		Digest           string `json:"digest"`
		MediaType        string `json:"media_type"`
		CompressedSize   int64  `json:"compressed_size"`
		DiffID           string `json:"diff_id"`
		UncompressedSize int64  `json:"uncompressed_size"`
	} `json:"layers"`
	Config struct {
		OS           string            `json:"os"`
		Architecture string            `json:"architecture"`
		Variant      string            `json:"variant"`
		Created      string            `json:"created"`
		Author       string            `json:"author"`
		Env          []string          `json:"env"`
		Cmd          []string          `json:"cmd"`
		Entrypoint   []string          `json:"entrypoint"`
		User         string            `json:"user"`
		WorkingDir   string            `json:"working_dir"`
		Labels       map[string]string `json:"labels"`
		ExposedPorts []string          `json:"exposed_ports"`
		Volumes      []string          `json:"volumes"`
		StopSignal   string            `json:"stop_signal"`
	} `json:"config"`
	// Goclip is set for an archive of the Go clip: its storage info as the Go
	// clip's ExtractMetadata gave it, with the Go field names.
	Goclip *struct {
		FormatVersion int             `json:"format_version"`
		StorageType   string          `json:"storage_type"`
		Storage       json.RawMessage `json:"storage"`
	} `json:"goclip"`
}

// metadataFromInfo converts the C ABI's archive description into the metadata
// value the Go clip returned.
func metadataFromInfo(doc []byte, path string, size int64) (*common.ClipArchiveMetadata, error) {
	var in archiveInfo
	if err := json.Unmarshal(doc, &in); err != nil {
		return nil, fmt.Errorf("clip: archive description: %w", err)
	}
	header := common.ClipArchiveHeader{
		FormatVersion: in.FormatVersion,
		CreatedBy:     in.CreatedBy,
		Source:        in.Source,
		ArchiveSize:   size,
		Path:          path,
	}
	if g := in.Goclip; g != nil {
		return goclipMetadata(header, g.StorageType, g.Storage)
	}
	switch in.StorageType {
	case string(common.StorageModeLocal):
		// A self-contained v1 archive: the Go clip gave no storage info.
		return &common.ClipArchiveMetadata{Header: header}, nil
	case string(common.StorageModeS3):
		return &common.ClipArchiveMetadata{Header: header, StorageInfo: common.S3StorageInfo{
			Bucket:         in.S3.Bucket,
			Region:         in.S3.Region,
			Key:            in.S3.Key,
			Endpoint:       in.S3.Endpoint,
			ForcePathStyle: in.S3.PathStyle,
		}}, nil
	}
	layers := make([]string, len(in.Layers))
	hashes := make(map[string]string, len(in.Layers))
	layerData := make([]common.LayerMetadata, len(in.Layers))
	for i, l := range in.Layers {
		layers[i] = l.Digest
		hashes[l.Digest] = strings.TrimPrefix(l.DiffID, "sha256:")
		layerData[i] = common.LayerMetadata{MIMEType: l.MediaType, Digest: l.Digest, Size: l.CompressedSize}
	}
	c := in.Config
	created, _ := time.Parse(time.RFC3339Nano, c.Created) // zero when absent
	image := &common.ImageMetadata{
		Name:         imageName(in.Registry, in.Repository),
		Digest:       in.ManifestDigest,
		Created:      created,
		Labels:       c.Labels,
		Architecture: c.Architecture,
		Os:           c.OS,
		Variant:      c.Variant,
		Author:       c.Author,
		Env:          c.Env,
		Cmd:          c.Cmd,
		Entrypoint:   c.Entrypoint,
		User:         c.User,
		WorkingDir:   c.WorkingDir,
		ExposedPorts: set(c.ExposedPorts),
		Volumes:      set(c.Volumes),
		StopSignal:   c.StopSignal,
		Layers:       layers,
		LayersData:   layerData,
	}
	return &common.ClipArchiveMetadata{
		Header: header,
		StorageInfo: common.OCIStorageInfo{
			RegistryURL:             in.Registry,
			Repository:              in.Repository,
			Reference:               firstOf(in.Reference, in.ManifestDigest),
			Layers:                  layers,
			DecompressedHashByLayer: hashes,
			ImageMetadata:           image,
		},
	}, nil
}

// goclipMetadata is the metadata of an archive of the Go clip: the storage info it
// recorded, decoded into the same value types the Go clip's ExtractMetadata gave.
func goclipMetadata(header common.ClipArchiveHeader, storageType string, storage json.RawMessage) (*common.ClipArchiveMetadata, error) {
	header.CreatedBy = "the Go clip"
	switch storageType {
	case "":
		return &common.ClipArchiveMetadata{Header: header}, nil
	case string(common.StorageModeS3):
		var si common.S3StorageInfo
		if err := json.Unmarshal(storage, &si); err != nil {
			return nil, fmt.Errorf("clip: %s: s3 storage info: %w", header.Path, err)
		}
		return &common.ClipArchiveMetadata{Header: header, StorageInfo: si}, nil
	case string(common.StorageModeOCI):
		var si common.OCIStorageInfo
		if err := json.Unmarshal(storage, &si); err != nil {
			return nil, fmt.Errorf("clip: %s: oci storage info: %w", header.Path, err)
		}
		return &common.ClipArchiveMetadata{Header: header, StorageInfo: si}, nil
	}
	return nil, fmt.Errorf("clip: %s: unsupported storage info type %q", header.Path, storageType)
}

func imageName(registry, repository string) string {
	if registry == "" {
		return repository
	}
	return registry + "/" + repository
}

func firstOf(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func set(keys []string) map[string]struct{} {
	if len(keys) == 0 {
		return nil
	}
	m := make(map[string]struct{}, len(keys))
	for _, k := range keys {
		m[k] = struct{}{}
	}
	return m
}

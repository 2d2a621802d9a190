#!/usr/bin/env bash
# Writes, under OUTDIR, stand-ins for the beta9 dependencies the Go module proxy here
# does not serve, so that scripts/check-beta9.sh can build and test beta9's
# pkg/worker (beta9 0b79dfeb) against this repository's go/ module:
#
#   OUTDIR/tailscale       tailscale.com v1.95.0-pre.0.20260305003012-d58bfb8a1b51   stub
#   OUTDIR/goproc          github.com/beam-cloud/goproc v0.1.12                       stub
#   OUTDIR/geesefs         github.com/yandex-cloud/geesefs => github.com/beam-cloud/geesefs
#                          v0.0.0-20260812020252-3ae905aad43d (the fork)               stub
#                          (its own fork deps, github.com/jacobsa/fuse => beam-cloud/gofuse
#                          and the aws-sdk-go => geesefs/s3ext replace, are then unused)
#   OUTDIR/s2-sdk-go       github.com/s2-streamstore/s2-sdk-go v0.18.0                real source
#
# The stubs declare only the API that beta9's pkg/worker build graph (its tests
# included) uses: the packages compile and every call fails with errStub (nothing in
# the clip-related worker tests reaches them: tailnet, sandbox process manager, geesefs
# workspace mounts). Types and signatures copy those of the real modules (geesefs's
# core/cfg cache interfaces verbatim, since beta9 asserts its types implement them).
# s2-sdk-go is the real v0.18.0 tree, taken from S2_SDK_GIT (a git directory or URL,
# default https://github.com/s2-streamstore/s2-sdk-go.git) with `git archive`/`git clone`.
#
# Prints the --replace arguments for check-beta9.sh. Where the proxy serves them (or
# with GOPROXY=direct and access to GitHub) none of this is needed.
set -euo pipefail

OUT=${1:?usage: scripts/beta9-stubs.sh OUTDIR}
S2_SDK_GIT=${S2_SDK_GIT:-https://github.com/s2-streamstore/s2-sdk-go.git}
S2_SDK_VERSION=v0.18.0
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

w() { # w FILE: writes stdin to OUTDIR/FILE
    mkdir -p "$(dirname "$OUT/$1")"
    cat >"$OUT/$1"
}

# ---------------------------------------------------------------- tailscale.com
rm -rf "$OUT/tailscale"
w tailscale/go.mod <<'EOF'
module tailscale.com

go 1.22
EOF
w tailscale/stub.go <<'EOF'
// Package tailscale is a build stub (scripts/beta9-stubs.sh in the clip repository).
package tailscale
EOF
w tailscale/internal/stub/stub.go <<'EOF'
package stub

import "errors"

var ErrStub = errors.New("tailscale.com: build stub (clip scripts/beta9-stubs.sh)")
EOF
w tailscale/tstime/rate/rate.go <<'EOF'
// Package rate: the token bucket beta9's metrics use (tailscale.com/tstime/rate).
package rate

import (
	"sync"
	"time"
)

type Limit float64

type Limiter struct {
	mu     sync.Mutex
	limit  Limit
	burst  float64
	tokens float64
	last   time.Time
}

func NewLimiter(r Limit, b int) *Limiter {
	return &Limiter{limit: r, burst: float64(b), tokens: float64(b)}
}

func (l *Limiter) Allow() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if !l.last.IsZero() {
		l.tokens += now.Sub(l.last).Seconds() * float64(l.limit)
		if l.tokens > l.burst {
			l.tokens = l.burst
		}
	}
	l.last = now
	if l.tokens >= 1 {
		l.tokens--
		return true
	}
	return false
}
EOF
w tailscale/types/key/key.go <<'EOF'
package key

type NodePublic struct{ k [32]byte }

func NewNode() NodePrivate { return NodePrivate{} }

type NodePrivate struct{ k [32]byte }

func (k NodePrivate) Public() NodePublic { return NodePublic{k: k.k} }
func (k NodePublic) String() string     { return "nodekey:stub" }
EOF
w tailscale/ipn/ipnstate/ipnstate.go <<'EOF'
package ipnstate

import (
	"net/netip"

	"tailscale.com/types/key"
)

type Status struct {
	Version      string
	BackendState string
	TailscaleIPs []netip.Addr
	Self         *PeerStatus
	Peer         map[key.NodePublic]*PeerStatus
}

type PeerStatus struct {
	ID           string
	PublicKey    key.NodePublic
	HostName     string
	DNSName      string
	OS           string
	TailscaleIPs []netip.Addr
	Online       bool
	Active       bool
}
EOF
w tailscale/client/tailscale/localclient.go <<'EOF'
package tailscale

import (
	"context"

	"tailscale.com/internal/stub"
	"tailscale.com/ipn/ipnstate"
)

type LocalClient struct {
	Socket        string
	UseSocketOnly bool
}

func (lc *LocalClient) Status(ctx context.Context) (*ipnstate.Status, error) {
	return nil, stub.ErrStub
}

func (lc *LocalClient) StatusWithoutPeers(ctx context.Context) (*ipnstate.Status, error) {
	return nil, stub.ErrStub
}
EOF
w tailscale/tsnet/tsnet.go <<'EOF'
package tsnet

import (
	"context"
	"net"

	"tailscale.com/client/tailscale"
	"tailscale.com/internal/stub"
	"tailscale.com/ipn/ipnstate"
)

type Server struct {
	Dir        string
	Hostname   string
	AuthKey    string
	ControlURL string
	Ephemeral  bool
	Logf       func(format string, args ...any)
	UserLogf   func(format string, args ...any)
}

func (s *Server) Up(ctx context.Context) (*ipnstate.Status, error) { return nil, stub.ErrStub }
func (s *Server) Start() error                                     { return stub.ErrStub }
func (s *Server) Close() error                                     { return nil }
func (s *Server) Listen(network, addr string) (net.Listener, error) {
	return nil, stub.ErrStub
}
func (s *Server) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	return nil, stub.ErrStub
}
func (s *Server) LocalClient() (*tailscale.LocalClient, error) { return nil, stub.ErrStub }
EOF

# ---------------------------------------------------------------- goproc
rm -rf "$OUT/goproc"
w goproc/go.mod <<'EOF'
module github.com/beam-cloud/goproc

go 1.22
EOF
w goproc/proto/goproc.go <<'EOF'
// Package proto: the goproc message and stream types beta9 uses (stub).
package proto

import "context"

type ProcessInfo struct {
	Pid      int32
	Cmd      string
	Cwd      string
	Env      []string
	Running  bool
	ExitCode int32
}

type ProcessLogChunk struct {
	Seq    uint64
	Stream string
	Data   []byte
}

func (x *ProcessLogChunk) GetSeq() uint64 {
	if x == nil {
		return 0
	}
	return x.Seq
}

type ProcessLogAck struct {
	Seq uint64
	Ok  bool
}

type ExecProcessStarted struct{ Pid int32 }

type ExecProcessExited struct {
	Pid      int32
	ExitCode int32
	ErrorMsg string
}

type StreamExecResponse struct {
	Started *ExecProcessStarted
	Chunk   *ProcessLogChunk
	Exited  *ExecProcessExited
}

func (x *StreamExecResponse) GetStarted() *ExecProcessStarted {
	if x == nil {
		return nil
	}
	return x.Started
}
func (x *StreamExecResponse) GetChunk() *ProcessLogChunk {
	if x == nil {
		return nil
	}
	return x.Chunk
}
func (x *StreamExecResponse) GetExited() *ExecProcessExited {
	if x == nil {
		return nil
	}
	return x.Exited
}

type StreamExecStart struct {
	Args []string
	Cwd  string
	Env  []string
}

type isStreamExecRequest_Message interface{ isStreamExecRequest_Message() }

type StreamExecRequest struct {
	Message isStreamExecRequest_Message
}

type StreamExecRequest_Start struct{ Start *StreamExecStart }
type StreamExecRequest_Ack struct{ Ack *ProcessLogAck }

func (*StreamExecRequest_Start) isStreamExecRequest_Message() {}
func (*StreamExecRequest_Ack) isStreamExecRequest_Message()   {}

type GoProc_StreamExecClient interface {
	Send(*StreamExecRequest) error
	Recv() (*StreamExecResponse, error)
	CloseSend() error
	Context() context.Context
}
EOF
w goproc/pkg/client.go <<'EOF'
// Package goproc: the client API beta9 uses (stub; every call fails).
package goproc

import (
	"context"
	"errors"

	"github.com/beam-cloud/goproc/proto"
)

var errStub = errors.New("goproc: build stub (clip scripts/beta9-stubs.sh)")

type GoProcClient struct {
	Addr string
	Port uint
}

func NewGoProcClient(ctx context.Context, addr string, port uint) (*GoProcClient, error) {
	return nil, errStub
}

func (c *GoProcClient) Ready() error                          { return errStub }
func (c *GoProcClient) ReadyContext(ctx context.Context) error { return errStub }
func (c *GoProcClient) Exec(args []string, cwd string, env []string, wait bool) (int, error) {
	return -1, errStub
}
func (c *GoProcClient) StreamExec(ctx context.Context, args []string, cwd string, env []string, wait bool) (proto.GoProc_StreamExecClient, error) {
	return nil, errStub
}
func (c *GoProcClient) Wait(pid int) (int, error)          { return -1, errStub }
func (c *GoProcClient) Kill(pid int) error                 { return errStub }
func (c *GoProcClient) Signal(pid int, signal int) error   { return errStub }
func (c *GoProcClient) Status(pid int) (int, error)        { return -1, errStub }
func (c *GoProcClient) Stdout(pid int) (string, error)     { return "", errStub }
func (c *GoProcClient) Stderr(pid int) (string, error)     { return "", errStub }
func (c *GoProcClient) ListProcesses() ([]*proto.ProcessInfo, error) { return nil, errStub }
func (c *GoProcClient) Cleanup() error                     { return nil }
EOF

# ---------------------------------------------------------------- geesefs (beam-cloud fork)
rm -rf "$OUT/geesefs"
w geesefs/go.mod <<'EOF'
module github.com/yandex-cloud/geesefs

go 1.22
EOF
# core/cfg/cache.go as in beam-cloud/geesefs 3ae905a (beta9 asserts its cache implements these).
w geesefs/core/cfg/cache.go <<'EOF'
package cfg

import "context"

type ContentCache interface {
	GetContent(hash string, offset int64, length int64, opts struct{ RoutingKey string }) ([]byte, error)
	GetContentStream(hash string, offset int64, length int64, opts struct {
		RoutingKey string
	}) (chan []byte, error)
	StoreContent(chunks chan []byte, hash string, opts struct{ RoutingKey string }) (string, error)
	StoreContentFromS3(source struct {
		Path        string
		BucketName  string
		Region      string
		EndpointURL string
		AccessKey   string
		SecretKey   string
	}, opts struct {
		RoutingKey string
		Lock       bool
	}) (string, error)
}

type ContentCacheReadInto interface {
	ReadContentInto(ctx context.Context, hash string, offset int64, dst []byte, opts struct{ RoutingKey string }) (int64, error)
}

type ContentCacheStoreLocalPath interface {
	StoreContentFromLocalPath(source struct {
		Path      string
		CachePath string
	}, opts struct {
		RoutingKey string
		Lock       bool
	}) (string, error)
}

type ContentCacheObjectIdentity struct {
	Endpoint string
	Bucket   string
	Path     string
	ETag     string
	Size     uint64
}

type ContentCacheObjectHashRegistry interface {
	LookupObjectContentHash(ctx context.Context, identity ContentCacheObjectIdentity) (hash string, found bool, err error)
	StoreObjectContentHash(ctx context.Context, identity ContentCacheObjectIdentity, hash string) error
}

type ClientLocalPageFileView struct {
	Path   string
	Offset int64
	Length int
}

type ContentCacheClientLocalPageFileViews interface {
	ClientLocalPageFileViews(hash string, offset int64, length int64, opts struct{ RoutingKey string }) ([]ClientLocalPageFileView, error)
}
EOF
# The FlagStorage / S3Config fields beta9 sets, with the real types.
w geesefs/core/cfg/config.go <<'EOF'
package cfg

import (
	"os"
	"time"
)

// s3ext/aws/client.DefaultRetryerMaxNumRetries
const DefaultMetadataSDKMaxRetries = 3

type PartSizeConfig struct {
	PartSize  uint64
	PartCount uint64
}

type EventType string

const (
	EventCacheTriggered     EventType = "cache_triggered"
	EventStagedFileUploaded EventType = "staged_file_uploaded"
)

type FlagStorage struct {
	MountOptions                  []string
	MountPoint                    string
	DirMode                       os.FileMode
	FileMode                      os.FileMode
	CacheFileMode                 os.FileMode
	Uid, Gid                      uint32
	Setuid, Setgid                int
	Endpoint                      string
	Backend                       interface{}
	StagedWriteModeEnabled        bool
	StagedWritePath               string
	StagedWriteDebounce           time.Duration
	CacheThroughModeEnabled       bool
	ExternalCacheClient           ContentCache
	ExternalCacheStreamingEnabled bool
	ExternalCacheDirectIO         bool
	HashAttr                      string
	MinFileSizeForHashKB          uint64
	EventCallback                 func(event EventType, data map[string]interface{})
	MemoryLimit                   uint64
	MaxFlushers                   int64
	MaxParallelParts              int
	HTTPTimeout                   time.Duration
	MetadataHTTPTimeout           time.Duration
	ReadRetryAttempts             int
	FuseReadAheadKB               uint64
	ReadAheadKB                   uint64
	ReadAheadLargeKB              uint64
	ReadAheadParallelKB           uint64
	FsyncOnClose                  bool
	SymlinkZeroed                 bool
	PartSizes                     []PartSizeConfig
	NoPreloadDir                  bool
	DebugMain                     bool
	Foreground                    bool
	StatsInterval                 time.Duration
}

type S3Config struct {
	Profile               string
	AccessKey             string
	SecretKey             string
	Region                string
	StorageClass          string
	MetadataSDKMaxRetries int
}

func (c *S3Config) Init() *S3Config {
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	if c.StorageClass == "" {
		c.StorageClass = "STANDARD"
	}
	return c
}

func DefaultFlags() *FlagStorage {
	uid, gid := os.Getuid(), os.Getgid()
	return &FlagStorage{
		DirMode:       0755,
		FileMode:      0644,
		CacheFileMode: 0644,
		Uid:           uint32(uid),
		Gid:           uint32(gid),
		Setuid:        uid,
		Setgid:        gid,
		Endpoint:      "https://storage.yandexcloud.net",
		Backend:       (&S3Config{}).Init(),
		MemoryLimit:   1000 * 1024 * 1024,
	}
}
EOF
w geesefs/core/core.go <<'EOF'
// Package core: the geesefs mount API beta9 uses (stub; mounting fails).
package core

import (
	"context"
	"errors"

	"github.com/yandex-cloud/geesefs/core/cfg"
)

var errStub = errors.New("geesefs: build stub (clip scripts/beta9-stubs.sh)")

type Goofys struct{}

func (fs *Goofys) WaitForFlush() {}
func (fs *Goofys) SyncFS(parent interface{}) error { return errStub }

type MountedFS interface {
	Join(ctx context.Context) error
	Unmount() error
}

func MountFuse(ctx context.Context, bucketName string, flags *cfg.FlagStorage) (fs *Goofys, mfs MountedFS, err error) {
	return nil, nil, errStub
}
EOF

# ---------------------------------------------------------------- s2-sdk-go (real source)
rm -rf "$OUT/s2-sdk-go" && mkdir -p "$OUT/s2-sdk-go"
if [ -d "$S2_SDK_GIT" ]; then
    git -C "$S2_SDK_GIT" archive "$S2_SDK_VERSION" | tar -x -C "$OUT/s2-sdk-go"
else
    tmp=$(mktemp -d)
    git clone -q --depth 1 --branch "$S2_SDK_VERSION" "$S2_SDK_GIT" "$tmp/s2"
    git -C "$tmp/s2" archive HEAD | tar -x -C "$OUT/s2-sdk-go"
    rm -rf "$tmp"
fi

echo "--replace tailscale.com=$OUT/tailscale" \
     "--replace github.com/beam-cloud/goproc=$OUT/goproc" \
     "--replace github.com/yandex-cloud/geesefs=$OUT/geesefs" \
     "--replace github.com/s2-streamstore/s2-sdk-go=$OUT/s2-sdk-go"

package common

import "time"

// ReadTraceEvent describes one lazy read inside a mounted image.
type ReadTraceEvent struct {
	Operation        string // "clip.read", ...
	Source           string
	Path             string
	LayerDigest      string
	DecompressedHash string
	Offset           int64
	Length           int64
	BytesRead        int64
	StartedAt        time.Time
	Duration         time.Duration
	CallerPID        uint32 // pid of the process that issued the FUSE request
	Success          bool
	Error            string
	Attrs            map[string]string
}

// ReadTraceObserver receives read events. It runs synchronously on the mount's read
// path (FUSE threads), so it must not block.
type ReadTraceObserver func(ReadTraceEvent)

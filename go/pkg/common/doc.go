// Package common holds the data types shared by the clip packages: archive metadata
// and its storage info, image metadata, registry credential providers and read-trace
// events. It mirrors the pkg/common package of the Go clip that the beta9 worker
// imports today, so that code written against it compiles unchanged; the few
// differences are listed in docs/GO.md.
//
// Nothing here calls into the Rust library: these are plain Go values, filled by
// package clip.
package common

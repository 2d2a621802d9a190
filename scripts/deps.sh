#!/usr/bin/env bash
# Installs the Debian packages clip's tests, demo and benchmarks use, if missing.
set -euo pipefail
need=()
for pair in fusermount3:fuse3 umoci:umoci skopeo:skopeo getfattr:attr zstd:zstd gzip:gzip python3:python3 debootstrap:debootstrap \
    htpasswd:apache2-utils openssl:openssl gcc:gcc g++:g++ pkg-config:pkg-config valgrind:valgrind tar:tar go:golang-go; do
  cmd=${pair%%:*} pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Go package (go/) needs the Go version its go.mod names; from Go 1.21 on, `go`
# fetches a newer toolchain itself (GOTOOLCHAIN=auto, through the module proxy).
gov=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
case "$gov" in
  1.1[0-9]*|1.20*|"") echo "deps: warning: go ${gov:-?} cannot build go/ or tests/goclip-gen (they need Go >= 1.21 to fetch the toolchain their go.mod names)" >&2 ;;
esac
# tests/goclip-gen: the tests' generator of archives written by the original Go
# clip (the version beta9 pins). The tests build it themselves (modules from the
# proxy, its committed go.sum); building it here just fetches the modules early.
# (`go mod download` cannot: the proxy has no .info for that pseudo-version.)
here=$(cd "$(dirname "$0")/.." && pwd)
if ! (cd "$here/tests/goclip-gen" && GOTOOLCHAIN=${GOTOOLCHAIN:-auto} go build -o /dev/null .); then
  echo "deps: warning: could not build tests/goclip-gen (the goclip_gen tests will fail)" >&2
fi
# versitygw: the S3 server (SigV4, posix backend) that tests/s3.rs and the Go tests
# run on loopback. Built from its Go module into /usr/local/bin, so it is on PATH.
if ! command -v versitygw >/dev/null 2>&1; then
  echo "deps: installing versitygw v1.8.0 (go install, a few minutes)" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO env PATH="$PATH" GOBIN=/usr/local/bin GOTOOLCHAIN=auto \
    go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi

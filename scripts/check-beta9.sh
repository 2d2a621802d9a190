#!/usr/bin/env bash
# Builds, vets and tests a beta9 tree's worker (pkg/worker) against this repository's
# Go module (go/) instead of the Go clip: the check that the packages replace the old
# ones call for call.
#
#   scripts/check-beta9.sh BETA9_DIR [--replace MOD=PATH]...
#   make check-beta9 BETA9_DIR=... [BETA9_REPLACES="MOD=PATH ..."]
#
# 1. Copies BETA9_DIR to a scratch directory (mktemp; removed at the end unless KEEP=1).
# 2. Rewrites the imports github.com/beam-cloud/clip/pkg/{clip,common,storage} to
#    github.com/beam-cloud/clip/go/pkg/... in every .go file (any other clip import is
#    an error), requires github.com/beam-cloud/clip/go v0.0.0 replaced by this repo's
#    go/, drops the old github.com/beam-cloud/clip require (nothing imports it any more),
#    and applies each --replace MOD=PATH (`go mod edit -replace`, which supersedes a
#    replace beta9 already has for MOD).
# 3. Applies the one documented code change (docs/GO.md): *fuse.Server -> *clip.Server
#    in pkg/worker/image.go and pkg/worker/lifecycle_test.go, dropping the go-fuse fuse
#    import where it became unused.
# 4. go build ./pkg/worker/...; go vet ./pkg/worker/ (beta9's own findings at 0b79dfeb,
#    copylocks in runtime_credentials_test.go and worker_test.go and lostcancel in
#    criu.go, are filtered; anything else fails); go test ./pkg/worker/
#    -run 'Clip|Archive|Metadata|Cache' -count=1 -v, failing if a test fails or is
#    skipped. Prints a summary.
#
# libclip: from CLIP_PREFIX (lib/pkgconfig/clip.pc, lib/libclip.so*), else this repo's
# `make install PROFILE=debug PREFIX=target/go-prefix` (builds the Rust library).
#
# beta9 0b79dfeb needs five module versions the Go module proxy here does not serve
# (tailscale.com v1.95.0-pre.0.20260305003012-d58bfb8a1b51, github.com/s2-streamstore/
# s2-sdk-go v0.18.0, the beam-cloud forks of geesefs and gofuse, github.com/beam-cloud/
# goproc v0.1.12). scripts/beta9-stubs.sh OUTDIR writes stand-ins for them and prints the
# replaces; the ones used for 0b79dfeb:
#
#   scripts/beta9-stubs.sh /tmp/beta9-deps     # S2_SDK_GIT=<git dir or URL> optional
#   scripts/check-beta9.sh /tmp/beta9-src \
#     --replace tailscale.com=/tmp/beta9-deps/tailscale \
#     --replace github.com/beam-cloud/goproc=/tmp/beta9-deps/goproc \
#     --replace github.com/yandex-cloud/geesefs=/tmp/beta9-deps/geesefs \
#     --replace github.com/s2-streamstore/s2-sdk-go=/tmp/beta9-deps/s2-sdk-go
#
# (tailscale, goproc, geesefs: API-only stubs, calls fail; s2-sdk-go: the real v0.18.0
# source. With the geesefs stub, the gofuse fork that geesefs needs is out of the build.)
# Where those modules can be downloaded, no --replace is needed.
set -euo pipefail

usage() { echo "usage: $0 BETA9_DIR [--replace MOD=PATH]..." >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-go}
BETA9_DIR=""
REPLACES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --replace) [ $# -ge 2 ] || usage; REPLACES+=("$2"); shift 2 ;;
        --replace=*) REPLACES+=("${1#--replace=}"); shift ;;
        -h|--help) usage ;;
        *) [ -z "$BETA9_DIR" ] || usage; BETA9_DIR=$1; shift ;;
    esac
done
[ -n "$BETA9_DIR" ] && [ -f "$BETA9_DIR/go.mod" ] || usage
BETA9_DIR=$(cd "$BETA9_DIR" && pwd)
START=$(date +%s)

say() { printf '== %s\n' "$*"; }
die() { printf 'check-beta9: FAIL: %s\n' "$*" >&2; exit 1; }

# libclip
if [ -n "${CLIP_PREFIX:-}" ]; then
    PREFIX=$(cd "$CLIP_PREFIX" && pwd)
else
    PREFIX=$REPO/target/go-prefix
    say "libclip: make install PROFILE=debug PREFIX=$PREFIX"
    make -C "$REPO" --no-print-directory install PROFILE=debug PREFIX="$PREFIX" >/dev/null
fi
[ -f "$PREFIX/lib/pkgconfig/clip.pc" ] || die "no $PREFIX/lib/pkgconfig/clip.pc"
export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export LD_LIBRARY_PATH=$PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CGO_ENABLED=1
# The scratch go.mod/go.sum may gain entries (our module's requirements).
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"

# 1. scratch copy
WORK=$(mktemp -d "${TMPDIR:-/tmp}/beta9-check.XXXXXX")
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then echo "check-beta9: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
say "copy $BETA9_DIR -> $WORK"
cp -a "$BETA9_DIR/." "$WORK/"
cd "$WORK"

# 2. imports and go.mod
other=$(grep -rhoE --include='*.go' '"github\.com/beam-cloud/clip(/[^"]*)?"' . \
    | grep -vE '"github\.com/beam-cloud/clip/pkg/(clip|common|storage)"' | sort -u || true)
[ -z "$other" ] || die "beta9 imports clip packages this module does not provide: $other"
files=$(grep -rlE --include='*.go' '"github\.com/beam-cloud/clip/pkg/(clip|common|storage)"' . || true)
nfiles=$(printf '%s\n' $files | grep -c . || true)
say "rewrite clip imports in $nfiles files"
[ -z "$files" ] || printf '%s\n' $files | xargs sed -i -E \
    's#"github\.com/beam-cloud/clip/pkg/(clip|common|storage)"#"github.com/beam-cloud/clip/go/pkg/\1"#g'
$GO mod edit -require=github.com/beam-cloud/clip/go@v0.0.0 \
    -replace=github.com/beam-cloud/clip/go="$REPO/go"
if ! grep -rqE --include='*.go' '"github\.com/beam-cloud/clip/pkg/' .; then
    $GO mod edit -droprequire=github.com/beam-cloud/clip
fi
for r in ${REPLACES[@]+"${REPLACES[@]}"}; do
    case "$r" in *=*) ;; *) die "--replace $r: want MOD=PATH" ;; esac
    say "replace $r"
    $GO mod edit -replace="$r"
done

# 3. *fuse.Server -> *clip.Server (docs/GO.md, "The one change the worker's code needs")
fuse_import='"github.com/hanwen/go-fuse/v2/fuse"'
clip_import='"github.com/beam-cloud/clip/go/pkg/clip"'
for f in pkg/worker/image.go pkg/worker/lifecycle_test.go; do
    [ -f "$f" ] || die "$f: not in this tree"
    grep -q '\*fuse\.Server' "$f" || die "$f: no *fuse.Server to change"
    sed -i 's/\*fuse\.Server/*clip.Server/g' "$f"
    if ! grep -q '\bfuse\.' "$f"; then
        sed -i "\#^[[:space:]]*$fuse_import\$#d" "$f"
    fi
    if ! grep -qF "$clip_import" "$f"; then
        # add the import after the first import line of clip's module
        sed -i "0,\#^.*\"github.com/beam-cloud/clip/go/pkg/.*\$#s##\t$clip_import\n&#" "$f"
        grep -qF "$clip_import" "$f" || die "$f: could not add the clip import"
    fi
    say "$f: *fuse.Server -> *clip.Server"
done
gofmt -l pkg/worker/image.go pkg/worker/lifecycle_test.go | grep . && die "gofmt after the edit" || true

# 4. build, vet, tests
say "go build ./pkg/worker/..."
$GO build ./pkg/worker/... || die "go build"

say "go vet ./pkg/worker/"
vet_out=$WORK/.vet.out
if $GO vet ./pkg/worker/ >"$vet_out" 2>&1; then vet_rc=0; else vet_rc=$?; fi
# beta9's own findings at 0b79dfeb (not ours): copylocks in two tests, lostcancel in criu.go.
known_re='^pkg/worker/(runtime_credentials_test|worker_test)\.go:[0-9]+:[0-9]+: (range var .* copies lock|assignment copies lock value)|^pkg/worker/criu\.go:[0-9]+:[0-9]+: (the checkpointCancel function is not used on all paths|this return statement may be reached without using the checkpointCancel var)'
unexpected=$(grep -vE '^#' "$vet_out" | grep -vE "$known_re" || true)
known=$(grep -cE "$known_re" "$vet_out" || true)
if [ -n "$unexpected" ]; then
    cat "$vet_out" >&2
    die "go vet: findings other than beta9's known ones:
$unexpected"
fi
[ "$vet_rc" = 0 ] || [ "$known" -gt 0 ] || { cat "$vet_out" >&2; die "go vet exited $vet_rc"; }
say "go vet: $known known beta9 findings filtered, nothing else"

say "go test ./pkg/worker/ -run 'Clip|Archive|Metadata|Cache' -count=1 -v"
test_out=$WORK/.test.out
if $GO test ./pkg/worker/ -run 'Clip|Archive|Metadata|Cache' -count=1 -v 2>&1 | tee "$test_out"; then
    test_rc=0
else
    test_rc=$?
fi
passed=$(grep -cE '^\s*--- PASS: ' "$test_out" || true)
top_passed=$(grep -cE '^--- PASS: ' "$test_out" || true)
failed=$(grep -cE '^\s*--- FAIL: ' "$test_out" || true)
skipped=$(grep -cE '^\s*--- SKIP: ' "$test_out" || true)
elapsed=$(( $(date +%s) - START ))
echo
echo "check-beta9: beta9 $(git -C "$BETA9_DIR" rev-parse --short HEAD 2>/dev/null || basename "$BETA9_DIR"), libclip $PREFIX"
echo "check-beta9: build ok, vet ok ($known known beta9 findings), tests: $top_passed top-level passed ($passed with subtests), $failed failed, $skipped skipped, ${elapsed}s"
if [ "$skipped" -gt 0 ]; then
    grep -E '^\s*--- SKIP: ' "$test_out" >&2
    die "$skipped tests skipped"
fi
if [ "$failed" -ne 0 ] || [ "$test_rc" -ne 0 ]; then
    grep -E '^\s*--- FAIL: ' "$test_out" >&2 || true
    die "go test (exit $test_rc, $failed failed)"
fi
[ "$top_passed" -gt 0 ] || die "no test ran"
echo "$top_passed passed, 0 failed"

#!/usr/bin/env bash
# Builds the C ABI tests against an *installed* clip (header, library, clip.pc found
# through pkg-config) and runs them:
#   run.sh PREFIX          headertest (C99 and C++), then the harness under
#                          AddressSanitizer+UBSan and again under valgrind, against
#                          a real OCI layout (GNU tar, gzip), a real registry
#                          (docker-registry with htpasswd auth, pushed with skopeo)
#                          and real FUSE mounts. Fails, never skips, when any of
#                          them is missing.
#   run.sh --bench PREFIX  the per-call overhead benchmark (bench.c), one line per
#                          measure.
#   run.sh --deb ROOT      the packages (`make deb`) unpacked into ROOT: headertest and
#                          the harness (under AddressSanitizer only) built through
#                          pkg-config with ROOT as the sysroot, run against ROOT's
#                          library.
# `make test-c` and `make bench-abi-c` install the library to PREFIX first.
set -euo pipefail
mode=test
if [ "${1:-}" = --bench ]; then mode=bench; shift; fi
if [ "${1:-}" = --deb ]; then mode=deb; shift; fi
prefix=${1:?usage: run.sh [--bench|--deb] PREFIX|ROOT [harness test names...]}
shift
prefix=$(cd "$prefix" && pwd)
here=$(cd "$(dirname "$0")" && pwd)

die() { echo "tests/c: $*" >&2; exit 1; }
for tool in gcc g++ pkg-config tar gzip skopeo docker-registry htpasswd valgrind python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (make deps installs it)"
done

if [ "$mode" = deb ]; then
  # Packages unpacked into $prefix: their clip.pc says /usr; the sysroot maps it.
  multiarch=$(gcc -print-multiarch)
  export PKG_CONFIG_SYSROOT_DIR=$prefix PKG_CONFIG_LIBDIR=$prefix/usr/lib/$multiarch/pkgconfig
  unset PKG_CONFIG_PATH
  pkg-config --exists clip || die "clip.pc not found under $PKG_CONFIG_LIBDIR (was libclip-dev unpacked there?)"
  grep -qx "libdir=/usr/lib/$multiarch" "$PKG_CONFIG_LIBDIR/clip.pc" || die "clip.pc's libdir is not /usr/lib/$multiarch"
  libdir=$(pkg-config --variable=libdir clip) # pkgconf maps it into the sysroot
  [ "$libdir" = "$prefix/usr/lib/$multiarch" ] || die "pkg-config gave libdir $libdir, not under $prefix"
else
  export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
  pkg-config --exists clip || die "clip.pc not found under $PKG_CONFIG_PATH"
  libdir=$(pkg-config --variable=libdir clip)
fi
cflags=$(pkg-config --cflags clip)
libs="$(pkg-config --libs clip) -Wl,-rpath,$libdir -pthread"

work=$(mktemp -d /tmp/clip-c.XXXXXX)
registry_pid=
# Aborts the FUSE connections of mounts under $work and detaches them: a process
# stuck on its own mount cannot even be killed until its connection is aborted.
abort_mounts() {
  [ -d /sys/fs/fuse/connections ] && ! mountpoint -q /sys/fs/fuse/connections &&
    mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null
  awk -v w="$work/" 'index($5, w) == 1 { print $3, $5 }' /proc/self/mountinfo |
    while read -r dev mnt; do
      echo 1 > "/sys/fs/fuse/connections/${dev#*:}/abort" 2>/dev/null
      umount -l "$mnt"
    done
}
cleanup() {
  set +e
  abort_mounts
  if [ -n "$registry_pid" ]; then kill "$registry_pid"; wait "$registry_pid"; fi 2>/dev/null
  rm -rf "$work"
}
# Runs a command, killing it (and freeing its mounts) after $1 seconds.
with_deadline() {
  local secs=$1; shift
  "$@" &
  local pid=$!
  # The sleep must not hold the caller's stdout: killing the watchdog leaves it
  # running, and a pipe reader (`make test-c | tail`) would wait for it.
  ( sleep "$secs" </dev/null >/dev/null 2>&1; echo "tests/c: $1 timed out after ${secs}s" >&2; abort_mounts; kill -9 "$pid" ) 2>/dev/null &
  local dog=$!
  local rc=0
  wait "$pid" || rc=$?
  kill "$dog" 2>/dev/null; wait "$dog" 2>/dev/null
  return $rc
}
trap cleanup EXIT

# ---------------------------------------------------------------- fixtures
layout=$work/layout
rootfs=$work/rootfs
mkdir -p "$rootfs/etc" "$rootfs/data"
echo "hello from clip" > "$rootfs/etc/hello.txt"
head -c 3000000 /dev/urandom > "$rootfs/data/random.bin"
mkdir -p "$work/layer1" "$work/layer2"
cp -a "$rootfs/etc" "$work/layer1/"
cp -a "$rootfs/data" "$work/layer2/"
"$here/make_layout.py" "$layout" v1 '{"Env": ["PATH=/usr/bin:/bin", "FOO=bar"], "Cmd": ["/bin/app", "--serve"], "Entrypoint": ["/bin/entry"], "User": "1000:1000", "WorkingDir": "/data"}' "$work/layer1" "$work/layer2"
rm -rf "$work/layer1" "$work/layer2"

build() { # name, compiler flags...
  local out=$work/$1; shift
  "$@" -o "$out" $libs
}

if [ "$mode" = bench ]; then
  build bench gcc -std=c11 -O2 -Wall -Wextra -Werror $cflags "$here/bench.c"
  CLIP_TEST_WORK=$work CLIP_TEST_LAYOUT=$layout "$work/bench"
  exit 0
fi

[ -e /dev/fuse ] || die "/dev/fuse is missing: the mount tests need it (modprobe fuse, or run the container with --device /dev/fuse)"

# A big, compressible layer: indexing it takes long enough to cancel midway.
mkdir -p "$work/bigroot/big"
yes "clip cancel test: a long, repetitive and very compressible line of text" | head -c 768M > "$work/bigroot/big/big.txt" || true
"$here/make_layout.py" "$layout" big '{}' "$work/bigroot"
rm -rf "$work/bigroot"

# ---------------------------------------------------------------- registry
user=clipuser pass=clip-secret-pw repo=clip/test
htpasswd -Bbn "$user" "$pass" > "$work/htpasswd"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
auth:
  htpasswd:
    realm: clip-test
    path: $work/htpasswd
YML
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
registry_pid=$!
python3 - "$port" <<'PY' || { cat "$work/registry.log" >&2; die "docker-registry did not start"; }
import sys, time, urllib.request, urllib.error
url = "http://127.0.0.1:%s/v2/" % sys.argv[1]
for _ in range(300):
    try:
        urllib.request.urlopen(url, timeout=1)
        sys.exit(0)
    except urllib.error.HTTPError as e:
        sys.exit(0 if e.code == 401 else 1)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
PY
skopeo copy --quiet --dest-tls-verify=false --dest-creds "$user:$pass" \
  "oci:$layout:v1" "docker://127.0.0.1:$port/$repo:v1"
printf '{"auths":{"127.0.0.1:%s":{"auth":"%s"}}}\n' "$port" "$(printf '%s:%s' "$user" "$pass" | base64 -w0)" > "$work/auth.json"
echo '{"auths":{}}' > "$work/empty-auth.json"

export CLIP_TEST_WORK=$work/run CLIP_TEST_LAYOUT=$layout CLIP_TEST_ROOTFS=$rootfs \
  CLIP_TEST_REGISTRY=127.0.0.1:$port CLIP_TEST_REPO=$repo CLIP_TEST_USER=$user CLIP_TEST_PASS=$pass \
  CLIP_TEST_AUTH_FILE=$work/auth.json CLIP_TEST_EMPTY_AUTH_FILE=$work/empty-auth.json
# Keep the host's docker credentials out of the default chain.
export DOCKER_CONFIG=$work/docker-config REGISTRY_AUTH_FILE=$work/empty-auth.json
mkdir -p "$DOCKER_CONFIG"

# ---------------------------------------------------------------- build
echo "tests/c: headertest (C99 and C++, -Wall -Wextra -pedantic -Werror)"
build headertest gcc -std=c99 -Wall -Wextra -pedantic -Werror $cflags "$here/headertest.c"
build headertest-cxx g++ -x c++ -std=c++11 -Wall -Wextra -pedantic -Werror $cflags "$here/headertest.c"
"$work/headertest"
"$work/headertest-cxx"

warn="-std=c11 -Wall -Wextra -Werror -g"
build harness-asan gcc $warn -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -fno-omit-frame-pointer $cflags "$here/harness.c"
build harness gcc $warn -O0 $cflags "$here/harness.c"

if [ "$mode" = deb ]; then
  # Not `ldd | grep -q`: grep quitting early makes ldd die of SIGPIPE, which
  # pipefail turns into a failure.
  deps=$(ldd "$work/harness-asan")
  grep -q "libclip.so.0 => $libdir/libclip.so.0" <<<"$deps" ||
    die "the harness does not load the packaged library: $(grep libclip <<<"$deps")"
fi

# ---------------------------------------------------------------- run
status=0
echo "tests/c: harness under AddressSanitizer"
rm -rf "$CLIP_TEST_WORK"; mkdir -p "$CLIP_TEST_WORK"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
  LSAN_OPTIONS=suppressions=$here/lsan.supp:print_suppressions=0 \
  with_deadline 600 "$work/harness-asan" "$@" || status=1

if [ "$mode" = deb ]; then
  [ $status = 0 ] && echo "tests/c: all passed against the packages" || echo "tests/c: FAILED" >&2
  exit $status
fi

echo "tests/c: harness under valgrind"
rm -rf "$CLIP_TEST_WORK"; mkdir -p "$CLIP_TEST_WORK"
CLIP_TEST_CANCEL_LIMIT=10 with_deadline 1200 valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite \
  --errors-for-leak-kinds=definite --suppressions="$here/valgrind.supp" \
  "$work/harness" "$@" || status=1

[ $status = 0 ] && echo "tests/c: all passed" || echo "tests/c: FAILED" >&2
exit $status

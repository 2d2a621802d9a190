#!/usr/bin/env bash
# The main job on a built-in example: build a small OCI image layout with umoci (two
# layers: a base and an update that deletes, replaces and hardlinks files), index it
# into a .clip archive, then read files back by random access and extract the whole
# tree, comparing with umoci's own unpack. Then end to end from a registry: push the
# image to a local docker-registry on 127.0.0.1, `clipctl create` from it, mount
# lazily, run a program of the image from the mount, and show the bytes fetched
# beside the image's size. No network beyond loopback needed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
clipctl="$root/target/release/clipctl"
work=$(mktemp -d /tmp/clip-demo.XXXXXX)
regpid=""
cleanup() {
  if [ -n "${mnt:-}" ] && awk -v p="$mnt" '$2 == p { f = 1 } END { exit !f }' /proc/mounts; then
    "$clipctl" umount "$mnt" >/dev/null 2>&1 || fusermount3 -u "$mnt" 2>/dev/null || true
  fi
  [ -z "$regpid" ] || kill "$regpid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

echo "== building an OCI layout with umoci in $work/layout"
umoci init --layout layout
umoci new --image layout:demo
umoci unpack --image layout:demo bundle >/dev/null
r=bundle/rootfs
mkdir -p $r/etc $r/usr/bin $r/usr/share/doc/demo $r/var/log
cp /etc/os-release $r/etc/os-release
printf '#!/bin/sh\necho hello from clip\n' > $r/usr/bin/hello && chmod 4755 $r/usr/bin/hello
# A shell to run it with inside the image: the host's, with the libraries it needs.
mkdir -p $r/bin
cp -L /bin/sh $r/bin/sh
for lib in $(ldd /bin/sh | grep -o '/[^ ]*'); do cp -L --parents "$lib" $r; done
cp -r /usr/share/common-licenses $r/usr/share/doc/demo/licenses
head -c 3000000 /dev/urandom > $r/var/log/random.bin
# Data the program never reads: a lazy start does not fetch it.
mkdir -p $r/opt/unused
for i in 1 2 3 4 5 6 7 8; do head -c 5000000 /dev/urandom > $r/opt/unused/blob$i.bin; done
ln -s ../usr/bin/hello $r/etc/hello-link
umoci repack --image layout:demo bundle
# Second layer (unpack again: a repack builds on the manifest it was unpacked from):
# delete a file, replace one, add a hardlink.
rm -rf bundle && umoci unpack --image layout:demo bundle >/dev/null
rm $r/etc/os-release
echo "replaced" > $r/usr/share/doc/demo/licenses/GPL-3
ln $r/usr/bin/hello $r/usr/bin/hello-hardlink
umoci repack --image layout:demo bundle
umoci config --image layout:demo --config.entrypoint /usr/bin/hello --config.env DEMO=1

echo "== indexing"
"$clipctl" index-layout --layout layout --tag demo --out demo.clip
ls -l layout/blobs/sha256 | awk '{s+=$5} END {print "layout blobs: " s " bytes"}'
"$clipctl" inspect demo.clip
echo "== ls /usr/bin"
"$clipctl" ls demo.clip /usr/bin
echo "== cat /usr/bin/hello (random access into the layer)"
"$clipctl" cat demo.clip /usr/bin/hello --layout layout --stats
echo "== extract and compare with umoci unpack"
"$clipctl" extract demo.clip extracted --layout layout
umoci unpack --image layout:demo reference >/dev/null
diff -r --no-dereference extracted reference/rootfs && echo "identical trees: OK"

echo "== end to end from a registry: docker-registry on 127.0.0.1"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > registry.yml <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve registry.yml > registry.log 2>&1 &
regpid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy -q --dest-tls-verify=false oci:layout:demo "docker://127.0.0.1:$port/demo:latest"
echo "pushed 127.0.0.1:$port/demo:latest"
echo "== clipctl create from the registry"
"$clipctl" create "127.0.0.1:$port/demo:latest" --out registry.clip
image_bytes=$(find registry -path '*/blobs/sha256/*/data' -printf '%s\n' | awk '{s+=$1} END {print s}')
echo "archive: $(stat -c %s registry.clip) bytes; image in the registry: $image_bytes bytes"
echo "== lazy mount (layers fetched from the registry on demand) and a program run from it"
[ -e /dev/fuse ] || { echo "demo: /dev/fuse is missing: the mount needs FUSE" >&2; exit 1; }
mnt=$work/mnt
"$clipctl" mount registry.clip "$mnt" --cache-dir "$work/cache" --daemon --stats-file "$work/stats.json"
if [ "$(id -u)" = 0 ]; then
  chroot "$mnt" /usr/bin/hello
else
  "$mnt/bin/sh" "$mnt/usr/bin/hello"
fi
sleep 0.3
python3 - "$work/stats.json" "$image_bytes" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
image = int(sys.argv[2])
print(f"compressed bytes fetched from the registry: {s['compressed_bytes_read']} of {image} "
      f"({100 * s['compressed_bytes_read'] / image:.1f}% of the image), in {s['fetches']} span fetches")
PY
"$clipctl" umount "$mnt"
echo "demo: OK"

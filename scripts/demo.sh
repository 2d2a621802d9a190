#!/usr/bin/env bash
# The main job on a built-in example: build a small OCI image layout with umoci (two
# layers: a base and an update that deletes, replaces and hardlinks files), index it
# into a .clip archive, then read files back by random access and extract the whole
# tree, comparing with umoci's own unpack. No network needed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
clipctl="$root/target/release/clipctl"
work=$(mktemp -d /tmp/clip-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"

echo "== building an OCI layout with umoci in $work/layout"
umoci init --layout layout
umoci new --image layout:demo
umoci unpack --image layout:demo bundle >/dev/null
r=bundle/rootfs
mkdir -p $r/etc $r/usr/bin $r/usr/share/doc/demo $r/var/log
cp /etc/os-release $r/etc/os-release
printf '#!/bin/sh\necho hello from clip\n' > $r/usr/bin/hello && chmod 4755 $r/usr/bin/hello
cp -r /usr/share/common-licenses $r/usr/share/doc/demo/licenses
head -c 3000000 /dev/urandom > $r/var/log/random.bin
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

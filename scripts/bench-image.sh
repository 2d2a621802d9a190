#!/usr/bin/env bash
# Builds the realistic benchmark image once into $1 (an OCI layout, tag "bench"):
# layer 1 = debootstrap --variant=minbase bookworm, layer 2 = the same plus python3
# and friends (a second debootstrap, so layer 2 is a real diff made by umoci).
set -euo pipefail
out=$1
[ -f "$out/.done" ] && exit 0
work=$(dirname "$out")/build
rm -rf "$out" "$work"; mkdir -p "$work"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
echo "bench: debootstrap minbase (layer 1)" >&2
debootstrap --variant=minbase bookworm "$work/base" "$mirror" >"$work/debootstrap1.log" 2>&1
echo "bench: debootstrap minbase + python3 (layer 2)" >&2
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,python3-setuptools,perl,libpython3.11-dev \
  bookworm "$work/py" "$mirror" >"$work/debootstrap2.log" 2>&1
umoci init --layout "$out"
umoci new --image "$out:bench"
umoci unpack --image "$out:bench" "$work/bundle" >/dev/null
rm -rf "$work/bundle/rootfs" && cp -a "$work/base" "$work/bundle/rootfs"
umoci repack --image "$out:bench" "$work/bundle"
# Unpack again so the second repack diffs against layer 1 (a repack always builds on
# the manifest the bundle was unpacked from).
rm -rf "$work/bundle" && umoci unpack --image "$out:bench" "$work/bundle" >/dev/null
rm -rf "$work/bundle/rootfs" && cp -a "$work/py" "$work/bundle/rootfs"
umoci repack --image "$out:bench" "$work/bundle"
umoci config --image "$out:bench" --config.cmd python3
rm -rf "$work"
touch "$out/.done"

#!/usr/bin/env bash
# Builds the Debian packages a worker image installs (`make deb`):
#   libclip0      the shared library (libclip.so.VERSION and its SONAME link
#                 libclip.so.0), with shlibs and an ldconfig trigger;
#   libclip-dev   include/clip.h, the libclip.so link and clip.pc (pkg-config).
# Into target/deb/: libclip0_VERSION_ARCH.deb and libclip-dev_VERSION_ARCH.deb.
# PROFILE=release (default) or debug (what the tests package: already built).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PROFILE=${PROFILE:-release}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
somajor=${version%%.*}
arch=$(dpkg --print-architecture)
multiarch=$(gcc -print-multiarch)
out=$root/target/deb
stage=$out/stage
rm -rf "$stage"; mkdir -p "$stage"
make --no-print-directory -s install PROFILE="$PROFILE" DESTDIR="$stage" PREFIX=/usr \
  LIBDIR="/usr/lib/$multiarch" INCLUDEDIR=/usr/include >/dev/null
lib=$stage/usr/lib/$multiarch
[ -f "$lib/libclip.so.$version" ] || { echo "deb: $lib/libclip.so.$version missing" >&2; exit 1; }
soname=$(objdump -p "$lib/libclip.so.$version" | awk '$1 == "SONAME" { print $2 }')
[ "$soname" = "libclip.so.$somajor" ] || { echo "deb: SONAME is $soname, want libclip.so.$somajor" >&2; exit 1; }
# The C library's symbol versions the library needs: the oldest glibc that has them.
glibc=$(objdump -T "$lib/libclip.so.$version" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)

pkg() { # name: a fresh package tree
  local d=$stage/pkg-$1
  rm -rf "$d"; mkdir -p "$d/DEBIAN"
  echo "$d"
}
control() { # dir name depends recommends description...
  local d=$1 name=$2 depends=$3 recommends=$4; shift 4
  local size
  size=$(du -sk --exclude=DEBIAN "$d" | cut -f1)
  cat > "$d/DEBIAN/control" <<CTL
Package: $name
Version: $version
Architecture: $arch
Multi-Arch: same
Section: libs
Priority: optional
Maintainer: clip developers <clip@localhost>
Installed-Size: $size
Depends: $depends
${recommends:+Recommends: $recommends
}Homepage: https://github.com/beam-cloud/clip
Description: $1
$(shift; for l in "$@"; do echo " $l"; done)
CTL
}

# libclip0
d=$(pkg libclip0)
mkdir -p "$d/usr/lib/$multiarch" "$d/usr/share/doc/libclip0"
cp -a "$lib/libclip.so.$version" "$lib/libclip.so.$somajor" "$d/usr/lib/$multiarch/"
strip --strip-unneeded "$d/usr/lib/$multiarch/libclip.so.$version" 2>/dev/null || true
cp README.md "$d/usr/share/doc/libclip0/"
control "$d" libclip0 "libc6 (>= $glibc), libgcc-s1" "fuse3" \
  "lazy-loading container images (shared library)" \
  "clip indexes OCI images into small .clip archives and mounts them lazily" \
  "with FUSE, fetching file bytes on demand from the registry. This package" \
  "holds the shared library with its stable C ABI."
echo "libclip $somajor libclip0 (>= $version)" > "$d/DEBIAN/shlibs"
echo "activate-noawait ldconfig" > "$d/DEBIAN/triggers"
# libclip-dev
d2=$(pkg libclip-dev)
mkdir -p "$d2/usr/lib/$multiarch/pkgconfig" "$d2/usr/include" "$d2/usr/share/doc/libclip-dev"
cp -a "$lib/libclip.so" "$d2/usr/lib/$multiarch/"
cp "$lib/pkgconfig/clip.pc" "$d2/usr/lib/$multiarch/pkgconfig/"
cp "$stage/usr/include/clip.h" "$d2/usr/include/"
cp docs/C-ABI.md "$d2/usr/share/doc/libclip-dev/"
control "$d2" libclip-dev "libclip0 (= $version)" "pkgconf" \
  "lazy-loading container images (development files)" \
  "The C header, the libclip.so link and clip.pc (pkg-config) for building" \
  "against libclip, from C or from Go with cgo."
sed -i 's/^Section: libs/Section: libdevel/' "$d2/DEBIAN/control"

mkdir -p "$out"
dpkg-deb --root-owner-group -Zxz --build "$d" "$out/libclip0_${version}_${arch}.deb" >/dev/null
dpkg-deb --root-owner-group -Zxz --build "$d2" "$out/libclip-dev_${version}_${arch}.deb" >/dev/null
echo "$out/libclip0_${version}_${arch}.deb"
echo "$out/libclip-dev_${version}_${arch}.deb"

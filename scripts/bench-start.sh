#!/usr/bin/env bash
# Cold container start by layer compression (issue 15): the bench image as built
# (gzip), and the same image converted by skopeo to single-frame zstd
# (`--dest-compress-format zstd`, what most zstd pushes are) and to zstd:chunked
# (many frames). For each: the index-only archive's size, and a cold
# `chroot MNT python3 -c PROG` from a lazy mount with an empty span cache: its time
# and the compressed bytes read from the layers (at the end of the start, and once
# the mount's background decoding has settled), beside the native cold start of the
# same tree. Called by scripts/bench.sh; runs alone too. Times are medians of $RUNS
# runs. Prints the table and (re)writes "## Cold start by layer compression
# (issue 15)" of BENCHMARKS.md.
#
# cold = `sync; echo 3 > /proc/sys/vm/drop_caches` right before the measured
#        command, on both sides (clip: after mounting, with a fresh span cache dir).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
RUNS=${RUNS:-3}
work=$root/bench-work
clipctl=$root/target/release/clipctl
layout=$work/layout native=$work/native
s=$work/start mnt=$work/start/mnt cache=$work/start/cache stats=$work/start/stats.json
samples=$s/samples.txt log=$s/bench-start.log
PY_PROG='import json, email.parser, http.client, ssl, sqlite3, decimal, asyncio'

die() { echo "bench-start: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (drop_caches, FUSE, chroot)"
[ -x "$clipctl" ] || die "$clipctl missing: build first (make build)"
"$root/scripts/bench-image.sh" "$layout"
[ -d "$native" ] || "$clipctl" extract "$work/bench.clip" "$native" --layout "$layout" >/dev/null 2>&1 \
  || { "$clipctl" index-layout --layout "$layout" --tag bench --out "$work/bench.clip" >/dev/null;
       "$clipctl" extract "$work/bench.clip" "$native" --layout "$layout" >/dev/null; }

. "$root/scripts/bench-lib.sh"
trap unmount EXIT
# settle: waits until compressed_bytes_read stops moving (background decoding done).
settle() {
  local a b
  a=$(stat_field compressed_bytes_read)
  for _ in $(seq 600); do
    sleep 0.5; b=$(stat_field compressed_bytes_read)
    [ "$a" = "$b" ] && return 0
    a=$b
  done
}

unmount
rm -rf "$mnt" "$cache" "$stats"; mkdir -p "$mnt"
: > "$samples"; : > "$log"

# ---------------------------------------------------------------- the variants
convert() { # FORMAT DIR
  [ -f "$2/.done" ] && return 0
  echo "bench-start: skopeo copy --dest-compress-format $1 (once, into $2)" >&2
  rm -rf "$2"
  skopeo copy -q --dest-compress-format "$1" "oci:$layout:bench" "oci:$2:bench" >>"$log" 2>&1
  touch "$2/.done"
}
convert zstd "$work/layout-zstd"
convert zstd:chunked "$work/layout-zchunked"
variants=(gzip zstd zchunked)
declare -A lay=([gzip]=$layout [zstd]=$work/layout-zstd [zchunked]=$work/layout-zchunked)
for v in "${variants[@]}"; do
  l=${lay[$v]}
  "$clipctl" index-layout --layout "$l" --tag bench --out "$s/$v.clip" >/dev/null 2>>"$log"
  mapfile -t ls < <(python3 "$root/scripts/bench-layers.py" "$l")
  sample "${v}_image_bytes" "$(stat -c %s "${ls[@]}" | awk '{ t += $1 } END { print t }')"
  sample "${v}_archive_bytes" "$(stat -c %s "$s/$v.clip")"
  sample "${v}_layers" "${#ls[@]}"
done

# ---------------------------------------------------------------- cold starts
for _ in $(seq "$RUNS"); do
  for v in "${variants[@]}"; do
    rm -rf "$cache" "$stats"
    "$clipctl" mount "$s/$v.clip" "$mnt" --layout "${lay[$v]}" --cache-dir "$cache" --daemon \
      --stats-file "$stats" >/dev/null 2>>"$log" || die "mount of $v failed; see $log"
    drop
    now t0
    chroot "$mnt" python3 -c "$PY_PROG" >/dev/null 2>>"$log" || die "python3 in the $v mount failed"
    now t1
    sample "${v}_start" "$(secs "$t0" "$t1")"
    sleep 0.3
    sample "${v}_start_compressed" "$(stat_field compressed_bytes_read)"
    sample "${v}_start_decoded" "$(stat_field bytes_decoded)"
    settle
    sample "${v}_settled_compressed" "$(stat_field compressed_bytes_read)"
    sample "${v}_settled_decoded" "$(stat_field bytes_decoded)"
    unmount
  done
  drop
  now t0; chroot "$native" python3 -c "$PY_PROG" >/dev/null; now t1
  sample native_start "$(secs "$t0" "$t1")"
done
rm -rf "$cache"

# ---------------------------------------------------------------- the table
BS_RUNS=$RUNS BS_PROG=$PY_PROG BS_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)" \
python3 - "$samples" "$root/BENCHMARKS.md" <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(sys.argv[2]), "scripts"))
from bench_md import read_samples, write_section, noisiest
raw, med = read_samples(sys.argv[1])
mb = lambda k: med[k] / 1e6
names = {"gzip": "gzip (as built)", "zstd": "zstd, single frame (skopeo zstd)",
         "zchunked": "zstd:chunked (skopeo)"}
rows = []
for v in ("gzip", "zstd", "zchunked"):
    img = med[f"{v}_image_bytes"]
    rows.append(f'| {names[v]} | {mb(f"{v}_image_bytes"):.1f} MB, {med[f"{v}_layers"]:.0f} layers '
                f'| {100 * med[f"{v}_archive_bytes"] / img:.2f}% '
                f'| {med[f"{v}_start"]:.2f} s ({med[f"{v}_start"] / med["native_start"]:.2f}x native) '
                f'| {mb(f"{v}_start_compressed"):.1f} MB ({100 * med[f"{v}_start_compressed"] / img:.1f}%) '
                f'| {mb(f"{v}_start_decoded"):.1f} MB '
                f'| {mb(f"{v}_settled_compressed"):.1f} MB ({med[f"{v}_settled_compressed"] / img:.2f}x the image) |')
sec = ["## Cold start by layer compression (issue 15)", "",
       f"Cold `chroot MNT python3 -c '{os.environ['BS_PROG']}'` from a lazy mount of the bench "
       "image's index-only archive, the layers in a local OCI layout, with an empty span cache; "
       "the image as built (gzip) and converted by skopeo. Native: the merged tree on local "
       f"disk, cold: {med['native_start']:.2f} s. Median of {os.environ['BS_RUNS']} runs; load "
       f"average at start {os.environ['BS_LOAD']}.", "",
       "| layers | image | archive (% of image) | cold start | compressed bytes read by the end of the start (% of image) | inflated by then | compressed bytes read once background decoding settled |",
       "|---|---|---|---|---|---|---|"] + rows + ["",
       "- A single-frame zstd layer has one checkpoint: every span is decoded from the layer's "
       "start. The store decodes such a layer in one pass, caching every span on the way, then "
       "the rest of the layer in the background (`Store::stream_group`): a start reads each "
       "layer it touches at most once. The last column shows it: at most 1.00x the image.",
       "- *cold*: `sync; echo 3 > /proc/sys/vm/drop_caches` right before the command, on both "
       "sides (clip: after mounting)."]
n = noisiest(raw, skip=("_bytes", "_compressed", "_decoded", "_layers"))
if n:
    sec.append(n)
write_section(sys.argv[2], sec)
print("\n".join(sec))
PY

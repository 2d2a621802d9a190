#!/usr/bin/env bash
# Span size against cold bytes (issue 15): the bench image indexed with uniform
# spans of 2 MiB (the default), 1 MiB, 512 KiB and 256 KiB; for each, the archive's
# size and what a cold `chroot MNT python3 -c PROG` from a lazy mount (empty span
# cache, layers in the local layout) fetches, as shares of the compressed image;
# then scripts/span-sim.py's estimate of placements not built (windows compressed
# together, finer spans only where small files sit), from the 256 KiB archive.
# Called by scripts/bench.sh; runs alone too. Medians of $RUNS runs. Prints the
# table and (re)writes "## Span size and cold bytes (issue 15)" of BENCHMARKS.md.
#
# cold = `sync; echo 3 > /proc/sys/vm/drop_caches` right before the start.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
RUNS=${RUNS:-3}
work=$root/bench-work
clipctl=$root/target/release/clipctl
layout=$work/layout
s=$work/spans mnt=$work/spans/mnt cache=$work/spans/cache stats=$work/spans/stats.json
samples=$s/samples.txt log=$s/bench-spans.log
PY_PROG='import json, email.parser, http.client, ssl, sqlite3, decimal, asyncio'
sizes=(2MiB 1MiB 512KiB 256KiB)

die() { echo "bench-spans: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (drop_caches, FUSE, chroot)"
[ -x "$clipctl" ] || die "$clipctl missing: build first (make build)"
"$root/scripts/bench-image.sh" "$layout"
. "$root/scripts/bench-lib.sh"
trap unmount EXIT

unmount
rm -rf "$s"; mkdir -p "$s" "$mnt"
: > "$samples"; : > "$log"
mapfile -t ls < <(python3 "$root/scripts/bench-layers.py" "$layout")
sample image_bytes "$(stat -c %s "${ls[@]}" | awk '{ t += $1 } END { print t }')"
for z in "${sizes[@]}"; do
  "$clipctl" index-layout --layout "$layout" --tag bench --span-size "$z" --out "$s/$z.clip" >/dev/null 2>>"$log"
  sample "${z}_archive" "$(stat -c %s "$s/$z.clip")"
done
for _ in $(seq "$RUNS"); do
  for z in "${sizes[@]}"; do
    unmount; rm -rf "$cache" "$stats"
    "$clipctl" mount "$s/$z.clip" "$mnt" --layout "$layout" --cache-dir "$cache" --daemon \
      --stats-file "$stats" --no-prefetch --record "$s/$z.profile.json" >/dev/null 2>>"$log" || die "mount failed; see $log"
    drop
    chroot "$mnt" python3 -c "$PY_PROG" >/dev/null 2>>"$log" || die "python3 in the $z mount failed"
    sleep 0.3
    sample "${z}_fetched" "$(stat_field compressed_bytes_read)"
    unmount
  done
done
rm -rf "$cache"
for _ in $(seq 50); do [ -f "$s/256KiB.profile.json" ] && break; sleep 0.1; done
python3 "$root/scripts/span-sim.py" "$s/256KiB.clip" "$s/256KiB.profile.json" > "$s/sim.txt" 2>>"$log" || die "span-sim failed; see $log"

BS_RUNS=$RUNS BS_PROG=$PY_PROG BS_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)" \
python3 - "$samples" "$root/BENCHMARKS.md" "$s/sim.txt" <<'PY'
import json, os, sys
sys.path.insert(0, os.path.join(os.path.dirname(sys.argv[2]), "scripts"))
from bench_md import read_samples, write_section
raw, med = read_samples(sys.argv[1])
img = med["image_bytes"]
rows = []
for z in ("2MiB", "1MiB", "512KiB", "256KiB"):
    name = z + (" (default)" if z == "2MiB" else "")
    rows.append(f"| uniform {name} | {100 * med[z + '_archive'] / img:.2f}% "
                f"| {med[z + '_fetched'] / 1e6:.1f} MB ({100 * med[z + '_fetched'] / img:.1f}%) | measured |")
sim = [json.loads(l) for l in open(sys.argv[3]) if l.strip()]
for r in sim:
    rows.append(f"| {r['name']} | {100 * r['archive'] / img:.2f}% "
                f"| {r['fetched'] / 1e6:.1f} MB ({100 * r['fetched'] / img:.1f}%) | estimated |")
env = os.environ
sec = ["## Span size and cold bytes (issue 15)", "",
       f"A cold `chroot MNT python3 -c '{env['BS_PROG']}'` from a lazy mount of the bench image "
       f"({img / 1e6:.1f} MB compressed) with an empty span cache and no startup profile "
       f"(`--no-prefetch`; read-ahead of the next span on, as in every mount): the compressed bytes "
       f"read from the layers, and the archive, as shares of the image. Measured rows: median of {env['BS_RUNS']} runs; load average at start "
       f"{env['BS_LOAD']}. Estimated rows: `scripts/span-sim.py` over the 256 KiB archive and the "
       "spans that start read (recorded with `--record`): checkpoints kept as the placement says, "
       "a read then costs the compressed bytes of every span it touches (no read-ahead: compare "
       "with the uniform rows estimated the same way), an archive the 256 KiB one's tables plus the "
       "windows of the checkpoints kept (compressed together: measured by compressing them).", "",
       "| placement | archive (% of image) | compressed bytes fetched (% of image) | |",
       "|---|---|---|---|"] + rows + ["",
       "- Aim (issue 15): at most 10% of the image fetched with the archive at most 0.5% of it."]
write_section(sys.argv[2], sec)
print("\n".join(sec))
PY

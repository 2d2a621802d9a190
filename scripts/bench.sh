#!/usr/bin/env bash
# make bench: builds a realistic image (scripts/bench-image.sh), then measures clip
# against baselines taken in the same run on the same machine, prints a table and
# writes BENCHMARKS.md; then scripts/bench-mount.sh, bench-registry.sh, bench-tier.sh,
# bench-abi.sh, bench-v1.sh, bench-read.sh, bench-start.sh, bench-wan.sh, bench-spans.sh and bench-goclip.sh add
# their sections.
# Times are the median of $RUNS runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
RUNS=${RUNS:-3}
work=$root/bench-work
clipctl=$root/target/release/clipctl
mkdir -p "$work"
"$root/scripts/bench-image.sh" "$work/layout"
if [ ! -x "$work/venv/bin/rapidgzip" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q rapidgzip
fi
rapidgzip=$work/venv/bin/rapidgzip
layout=$work/layout
mapfile -t layers < <(python3 "$root/scripts/bench-layers.py" "$layout")

# time_cmd: prints "seconds maxrss_kb" of the median run.
time_cmd() {
  local results=()
  for _ in $(seq "$RUNS"); do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    # Page the layers back in: every contender reads them from the page cache.
    cat "${layers[@]}" > /dev/null
    /usr/bin/time -o "$work/time.out" -f "%e %M" "$@" >/dev/null 2>&1
    results+=("$(tail -1 "$work/time.out")")
  done
  printf '%s\n' "${results[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"
}

comp_total=0; uncomp_total=0
for l in "${layers[@]}"; do
  comp_total=$((comp_total + $(stat -c %s "$l")))
  uncomp_total=$((uncomp_total + $(zcat < "$l" | wc -c)))
done

read -r t_clip rss_clip < <(time_cmd "$clipctl" index-layout --layout "$layout" --tag bench --out "$work/bench.clip")
# Layer-index cache (issue 11): the same index into an empty cache (each run starts
# from none, so it pays for storing the artifacts), then with every layer a hit (no
# layer byte read); the archives must be identical to the one without the cache.
lic=$work/layer-index-cache
read -r t_lic_cold _ < <(time_cmd sh -c "rm -rf '$lic' && exec '$clipctl' index-layout --layout '$layout' --tag bench --layer-index-cache '$lic' --out '$work/bench-lic.clip'")
cmp "$work/bench.clip" "$work/bench-lic.clip"
lic_bytes=$(du -sb "$lic" | cut -f1)
read -r t_lic_hit rss_lic_hit < <(time_cmd "$clipctl" index-layout --layout "$layout" --tag bench --layer-index-cache "$lic" --out "$work/bench-lic.clip")
cmp "$work/bench.clip" "$work/bench-lic.clip"
# A hit must not read the layers: with the blobs moved away it still succeeds.
for l in "${layers[@]}"; do mv "$l" "$l.away"; done
hit_ok=yes
"$clipctl" index-layout --layout "$layout" --tag bench --layer-index-cache "$lic" --out "$work/bench-lic.clip" 2>/dev/null || hit_ok=no
for l in "${layers[@]}"; do mv "$l.away" "$l"; done
cmp "$work/bench.clip" "$work/bench-lic.clip"
[ "$hit_ok" = yes ] || { echo "bench: an index with every layer a cache hit read a layer" >&2; exit 1; }
read -r t_zcat _ < <(time_cmd sh -c "for l in ${layers[*]}; do zcat < \$l > /dev/null; done")
read -r t_rgz _ < <(time_cmd sh -c "for l in ${layers[*]}; do $rapidgzip -P 2 -f --export-index $work/rgz.idx \$l; done")
"$rapidgzip" -P 2 -f --export-index "$work/rgz.idx" "${layers[0]}" >/dev/null 2>&1 || true
archive_size=$(stat -c %s "$work/bench.clip")
files=$("$clipctl" inspect --json "$work/bench.clip" | python3 -c 'import json,sys; print(json.load(sys.stdin)["inodes"])')
max_span=$("$clipctl" inspect --json "$work/bench.clip" | python3 -c 'import json,sys; print(max(l["max_span_bytes"] for l in json.load(sys.stdin)["layers"]))')

python3 - "$work/results.json" <<PY
import json, sys
r = dict(
  layers=${#layers[@]}, compressed=$comp_total, uncompressed=$uncomp_total, files=$files,
  t_clip=$t_clip, rss_clip_kb=$rss_clip, t_zcat=$t_zcat, t_rgz=$t_rgz,
  archive=$archive_size, max_span=$max_span, runs=$RUNS,
  t_lic_cold=$t_lic_cold, t_lic_hit=$t_lic_hit, rss_lic_hit_kb=$rss_lic_hit, lic_bytes=$lic_bytes,
)
json.dump(r, open(sys.argv[1], "w"), indent=1)
PY

python3 - "$work/results.json" "$root/BENCHMARKS.md" <<'PY'
import json, sys, platform, subprocess
r = json.load(open(sys.argv[1]))
mib = 1 << 20
rss_budget = 64 * mib + 300 * r["files"]
rows = [
  ("clip index-layout, whole image, digests verified", f'{r["t_clip"]:.2f} s', "1.00x"),
  ("zcat of every layer, one after another", f'{r["t_zcat"]:.2f} s', f'{r["t_clip"]/r["t_zcat"]:.2f}x (clip / zcat)'),
  ("rapidgzip -P 2 --export-index, every layer in turn", f'{r["t_rgz"]:.2f} s', f'{r["t_clip"]/r["t_rgz"]:.2f}x (clip / rapidgzip; aim <= 1.0)'),
  ("clip peak RSS while indexing", f'{r["rss_clip_kb"]/1024:.1f} MiB', f'budget {rss_budget/mib:.1f} MiB (64 MiB + 300 B x {r["files"]} files)'),
  ("archive size", f'{r["archive"]/1024:.0f} KiB', f'{100*r["archive"]/r["compressed"]:.3f}% of the compressed image (aim < 0.5%)'),
  ("largest span (uncompressed)", f'{r["max_span"]/mib:.2f} MiB', "aim <= 2 MiB"),
  ("index with an empty layer-index cache (`--layer-index-cache`, stores the artifacts)", f'{r["t_lic_cold"]:.2f} s', f'{r["t_lic_cold"]/r["t_clip"]:.2f}x (vs no cache)'),
  ("second index with a layer-index hit for every layer (no layer byte read; same archive)", f'{1000*r["t_lic_hit"]:.0f} ms', f'{r["t_lic_hit"]/r["t_clip"]:.3f}x ({r["t_clip"]/r["t_lic_hit"]:.0f}x faster than cold); peak RSS {r["rss_lic_hit_kb"]/1024:.1f} MiB'),
  ("layer-index artifacts stored", f'{r["lic_bytes"]/1024:.0f} KiB', f'{r["layers"]} artifacts, {100*r["lic_bytes"]/r["compressed"]:.3f}% of the compressed image'),
]
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
head = (f'Image: debootstrap minbase bookworm + a second layer with python3 (umoci), {r["layers"]} gzip layers, '
        f'{r["compressed"]/mib:.1f} MiB compressed, {r["uncompressed"]/mib:.1f} MiB uncompressed, {r["files"]} files. '
        f'Machine: {cpu}, {subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()} cores. '
        f'Median of {r["runs"]} runs; layers in the page cache for every contender.')
table = ["| measure | value | ratio / note |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
print(head); print(); print("\n".join(table))
md = ["# Benchmarks", "", "Produced by `make bench` (scripts/bench.sh); numbers from the last run on the CI machine type.", "",
      "## Indexing (issue 3)", "", head, "", *table, ""]
open(sys.argv[2], "w").write("\n".join(md))
PY

# Mount benchmarks (issue 4): clip's FUSE mount against the unpacked tree, zcat and
# ratarmount; (re)writes the section "## Mount (issue 4)" of BENCHMARKS.md.
RUNS=$RUNS "$root/scripts/bench-mount.sh"

# Registry benchmarks (issue 5): the same image served by a local registry;
# (re)writes the section "## Registry (issue 5)".
RUNS=$RUNS "$root/scripts/bench-registry.sh"

# C ABI and Go (issue 6): per-call overhead and the Go path beside clipctl;
# (re)writes the section "## C ABI and Go (issue 6)".
# Shared tier (issue 11): a second worker's cold python start against the first's,
# with the tier in an S3 bucket (versitygw) that the first one warmed.
RUNS=$RUNS "$root/scripts/bench-tier.sh"

RUNS=$RUNS "$root/scripts/bench-abi.sh"

# v1 archives (issue 10): `clipctl archive` of the merged tree (bench-work/native,
# made by bench-mount.sh) beside `tar -I 'zstd -T0'` of it, mount ready, cold reads
# and a chunk-size curve; (re)writes the section "## v1 archives (issue 10)".
RUNS=$RUNS "$root/scripts/bench-v1.sh"

# Read path (issue 14): every row of the issue's table beside its baseline, on the
# bench image and on a generated image of about 166,000 entries;
# (re)writes the section "## Read path (issue 14)".
RUNS=$RUNS "$root/scripts/bench-read.sh"

# Cold start by layer compression (issue 15): a cold python start from the bench
# image as built (gzip) and converted by skopeo to single-frame zstd and zstd:chunked;
# (re)writes the section "## Cold start by layer compression (issue 15)".
RUNS=$RUNS "$root/scripts/bench-start.sh"

# Start from a registry (issue 15): pull + unpack + run against a lazy start and a
# lazy start replaying a recorded startup profile, on loopback and through a proxy
# adding 50 ms per request at 1 Gbit/s; (re)writes "## Start from a registry (issue 15)".
RUNS=$RUNS "$root/scripts/bench-wan.sh"

# Span size and cold bytes (issue 15): the python start's bytes fetched against the
# archive's size, uniform spans measured and other placements estimated
# (scripts/span-sim.py); (re)writes "## Span size and cold bytes (issue 15)".
RUNS=$RUNS "$root/scripts/bench-spans.sh"

# Archives of the Go clip (issue 12): mount ready and a cold python start for the Go
# clip's v2 (indexed again) and v1 archives of the bench image beside ours;
# (re)writes the section "## Go-clip archives (issue 12)".
RUNS=$RUNS "$root/scripts/bench-goclip.sh"

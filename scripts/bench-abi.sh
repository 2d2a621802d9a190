#!/usr/bin/env bash
# C ABI and Go benchmarks (issue 6), run by scripts/bench.sh last: the per-call cost
# of the ABI from C (tests/c/bench.c) and from Go (go/cmd/clipbench), and the Go
# path's index and mount-ready times on the bench image beside clipctl's, all in
# this run. (Re)writes the section "## C ABI and Go (issue 6)" of BENCHMARKS.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
RUNS=${RUNS:-3}
work=$root/bench-work/abi
layout=$root/bench-work/layout
clipctl=$root/target/release/clipctl
prefix=$root/target/bench-prefix
rm -rf "$work"; mkdir -p "$work"
make -s --no-print-directory install PREFIX="$prefix" >/dev/null
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig LD_LIBRARY_PATH=$prefix/lib CGO_ENABLED=1

# C: one "bench-abi-c: NAME VALUE ns/call" line per measure.
./tests/c/run.sh --bench "$prefix" > "$work/c.out"
# Go: "NAME VALUE UNIT" lines; $RUNS runs on the bench image.
(cd go && go build -o "$work/clipbench" ./cmd/clipbench)
for i in $(seq "$RUNS"); do
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  cat "$layout"/blobs/sha256/* > /dev/null
  "$work/clipbench" -n 1000000 -layout "$layout" -tag bench -archive "$work/go.clip" \
    -mountpoint "$work/mnt" -cache "$work/cache$i" > "$work/go.$i.out"
done
# clipctl, the same work: index-layout, then mount --daemon until ready, umount.
mkdir -p "$work/mnt"
for i in $(seq "$RUNS"); do
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  cat "$layout"/blobs/sha256/* > /dev/null
  s=$(date +%s.%N)
  "$clipctl" index-layout --layout "$layout" --tag bench --out "$work/cli.clip" 2>/dev/null
  m=$(date +%s.%N)
  "$clipctl" mount "$work/cli.clip" "$work/mnt" --layout "$layout" --cache-dir "$work/clicache$i" --daemon
  e=$(date +%s.%N)
  "$clipctl" umount "$work/mnt"
  python3 -c "print('cli_index_layout', $m - $s, 's')" > "$work/cli.$i.out"
  python3 -c "print('cli_mount_ready', ($e - $m) * 1000, 'ms')" >> "$work/cli.$i.out"
done

PYTHONPATH="$root/scripts" python3 - "$work" "$root/BENCHMARKS.md" "$RUNS" <<'PY'
import glob, re, statistics, sys
work, md_path, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = {}
for line in open(f"{work}/c.out"):
    m = re.match(r"bench-abi-c:\s+(.*?)\s+([0-9.]+) ns/call", line)
    if m:
        c[m.group(1)] = float(m.group(2))
def collect(pattern):
    vals = {}
    for f in glob.glob(pattern):
        for line in open(f):
            if line.startswith("#") or not line.strip():
                continue
            name, v, unit = line.split()
            vals.setdefault(name, []).append(float(v))
    return {k: statistics.median(v) for k, v in vals.items()}
go, cli = collect(f"{work}/go.*.out"), collect(f"{work}/cli.*.out")
rows = [(f"C: {k}", f"{v:.1f} ns/call", "") for k, v in c.items()]
rows += [
  ("Go: clip.Version (cgo round trip, no-op)", f'{go["go_noop_call"]:.1f} ns/call', f'C: {c.get("clip_version", float("nan")):.1f} ns/call'),
  ("Go: ExtractMetadata of the bench archive", f'{go["go_extract_metadata"]/1000:.1f} µs/call', f'C clip_archive_info (the C harness\'s small archive): {c.get("clip_archive_info", float("nan"))/1000:.1f} µs/call'),
  ("Go: CreateIndexOnlyArchiveFromOCILayout, bench image", f'{go["go_index_layout"]:.2f} s', f'clipctl index-layout: {cli["cli_index_layout"]:.2f} s ({go["go_index_layout"]/cli["cli_index_layout"]:.2f}x)'),
  ("Go: MountArchive + start until the mount is live", f'{go["go_mount_ready"]:.1f} ms', f'clipctl mount --daemon until ready: {cli["cli_mount_ready"]:.1f} ms (a process start included)'),
  ("Go: first file read after mounting (cold span cache)", f'{go["go_first_file_read"]:.1f} ms', ""),
  ("Go: Unmount until the channel closes", f'{go["go_unmount"]:.1f} ms', ""),
]
head = (f"The C harness's bench.c and go/cmd/clipbench against the installed release library; "
        f"Go figures are the median of {runs} runs on the bench image (layers in the page cache, caches dropped before each run).")
cols = ["measure", "value", "beside it (same run)"]
table = ["| " + " | ".join(cols) + " |", "|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in rows]
section = ["## C ABI and Go (issue 6)", "", head, "", *table, ""]
print(head); print(); print("\n".join(table))
from bench_md import write_section
write_section(md_path, section)
PY

#!/usr/bin/env bash
# v1 archive benchmarks (issue 10): `clipctl archive` of the bench image's merged
# root filesystem (bench-work/native, the `clipctl extract` of the bench image that
# bench-mount.sh makes; made here if missing) against `tar -I 'zstd -T0'` of the same
# tree, measured in this run on this machine:
#  - archive size and create time (tree in the page cache for both: hot);
#  - mount ready (launch of `clipctl mount --daemon` to its return), cold and hot;
#  - cold (and hot) read of a small file and whole-tree tar, mount against the native tree;
#  - a chunk-size curve: size, bytes of one cold small read, create time.
# Called by scripts/bench.sh after the other sections; runs alone too (it builds the
# bench image with scripts/bench-image.sh if bench-work has none). Times are medians
# of $RUNS runs (mount ready: of max($RUNS, 5)). Writes bench-work/v1-results.json,
# prints the tables and (re)writes the section "## v1 archives (issue 10)" of
# BENCHMARKS.md, keeping the other sections.
#
# cold = `sync; echo 3 > /proc/sys/vm/drop_caches` right before the measured command,
#        on both sides (clip: after mounting, with a fresh, empty span cache dir);
# hot  = the same command again at once, on both sides.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
RUNS=${RUNS:-3}
READY_RUNS=$(( RUNS > 5 ? RUNS : 5 ))
work=$root/bench-work
clipctl=$root/target/release/clipctl
layout=$work/layout
clip=$work/bench.clip
native=$work/native
v=$work/v1                          # everything this script makes lives under here
mnt=$v/mnt cache=$v/cache stats=$v/stats.json
arch=$v/tree.clip tarzst=$v/tree.tar.zst
samples=$v/samples.txt log=$v/bench-v1.log
# The small files read cold: a ~40 KB python module and a tiny text file.
SMALL=usr/lib/python3.11/os.py
TINY=usr/lib/os-release
CHUNKS="256KiB 512KiB 1MiB 2MiB 4MiB"

die() { echo "bench-v1: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (drop_caches, FUSE)"
[ -x "$clipctl" ] || die "$clipctl missing: build first (make build)"
command -v zstd >/dev/null || die "zstd missing"

# ---------------------------------------------------------------- the tree
mkdir -p "$work"
"$root/scripts/bench-image.sh" "$layout"     # no-op when bench-work has the image
mapfile -t layers < <(python3 "$root/scripts/bench-layers.py" "$layout")
[ -f "$clip" ] || "$clipctl" index-layout --layout "$layout" --tag bench --out "$clip" >/dev/null
# Same tree and stamp as bench-mount.sh, so the two share it.
stamp=$(printf '%s\n' "${layers[@]##*/}")
if [ ! -d "$native" ] || [ "$(cat "$work/native.done" 2>/dev/null)" != "$stamp" ]; then
  echo "bench-v1: extracting the native tree to $native" >&2
  rm -rf "$native" "$work/native.done"
  "$clipctl" extract "$clip" "$native" --layout "$layout" >/dev/null 2>&1
  echo "$stamp" > "$work/native.done"
fi
for f in "$SMALL" "$TINY"; do [ -f "$native/$f" ] && [ ! -L "$native/$f" ] || die "$f: no regular file in $native"; done

# ---------------------------------------------------------------- mounts and cleanup
is_mounted() { awk -v p="$1" '$2 == p { f = 1 } END { exit !f }' /proc/mounts; }
# The daemon of our mount, by its command line (our own paths only).
mount_pid() {
  local p
  for p in $(pgrep -f -- "clipctl mount ($arch|$clip) $mnt " || true); do
    [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null || echo Z)" = Z ] || { echo "$p"; return; }
  done
}
wait_gone() {
  local i
  for i in $(seq 100); do
    [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo Z)" = Z ] && return
    sleep 0.1
  done
}
force_unmount() {
  is_mounted "$mnt" || return 0
  "$clipctl" umount "$mnt" >/dev/null 2>&1 || true
  is_mounted "$mnt" && { fusermount -u "$mnt" 2>/dev/null || fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; }
  return 0
}
exec 3>&2
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  exec 2>&3
  [ "$rc" = 0 ] || echo "bench-v1: stopping (exit $rc); unmounting $mnt" >&2
  force_unmount
  p=$(mount_pid); [ -z "$p" ] || kill "$p" 2>/dev/null || true
  if is_mounted "$mnt"; then echo "bench-v1: ERROR: $mnt left mounted" >&2; rc=1; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
force_unmount
is_mounted "$mnt" && die "stale mount at $mnt"
rm -rf "$v"; mkdir -p "$v" "$mnt"
: > "$samples"; : > "$log"

# ---------------------------------------------------------------- helpers
now() { printf -v "$1" '%s' "${EPOCHREALTIME/[.,]/}"; }
sample() { echo "$1 $2" >> "$samples"; }
secs() { awk -v d="$1" 'BEGIN { printf "%.6f", d / 1e6 }'; }
own_drops=0
drops() { awk '$1 == "drop_pagecache" { print $2 }' /proc/vmstat; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches || die "cannot drop the page cache"; own_drops=$((own_drops + 1)); }
# timed KEY CMD...: runs CMD (stdout discarded), records its wall time in seconds.
timed() {
  local key=$1 t0 t1; shift
  now t0
  "$@" >/dev/null 2>>"$log" || die "'$*' failed (for $key); see $log"
  now t1
  sample "$key" "$(secs $((t1 - t0)))"
}
tar_tree() { tar -C "$1" -cf - . | cat > /dev/null; }
# rtimed KEY CMD...: timed, plus CPU seconds (user + sys, children included) as
# KEY_cpu and peak RSS as KEY_rss_kb.
rtimed() {
  local key=$1 t0 t1; shift
  now t0
  /usr/bin/time -o "$v/time.out" -f "%U %S %M" "$@" >/dev/null 2>>"$log" || die "'$*' failed (for $key); see $log"
  now t1
  sample "$key" "$(secs $((t1 - t0)))"
  read -r u sy kb < <(tail -1 "$v/time.out")
  sample "${key}_cpu" "$(awk -v u="$u" -v s="$sy" 'BEGIN { printf "%.2f", u + s }')"
  sample "${key}_rss_kb" "$kb"
}
# create KEY OUT [clipctl archive args]: one timed `clipctl archive` of the native tree.
create() {
  local key=$1 out=$2; shift 2
  rm -f "$out"; sync
  rtimed "$key" "$clipctl" archive "$native" --out "$out" "$@"
}
# tar_create KEY sync|nosync: one timed baseline run.
tar_create() {
  rm -f "$tarzst"; sync
  if [ "$2" = sync ]; then
    rtimed "$1" sh -c 'tar -C "$1" -I "zstd -T0" -cf "$2" . && sync "$2"' sh "$native" "$tarzst"
  else
    rtimed "$1" tar -C "$native" -I 'zstd -T0' -cf "$tarzst" .
  fi
}
fresh_cache() { rm -rf "$cache" "$stats"; }
mount_cmd() { "$clipctl" mount "$arch" "$mnt" --daemon --cache-dir "$cache" --stats-file "$stats"; }
# The index-only archive of the same image (its layers in bench-work/layout): the
# mount section's archive, as the same-run baseline for mount ready.
v2_mount_cmd() { "$clipctl" mount "$clip" "$mnt" --layout "$layout" --daemon --cache-dir "$cache"; }
do_mount() { mount_cmd >/dev/null 2>>"$log" || die "clipctl mount failed; see $log"; is_mounted "$mnt" || die "mount not live"; }
do_umount() {
  local p; p=$(mount_pid)
  "$clipctl" umount "$mnt" 2>>"$log" || die "clipctl umount failed"
  [ -z "$p" ] || wait_gone "$p"
  ! is_mounted "$mnt" || die "$mnt still mounted after clipctl umount"
}
# ready KEY [MOUNT_CMD]: launch-to-return of `clipctl mount --daemon` as KEY, and
# launch to the first stat of etc/os-release as KEY_stat.
ready() {
  local t0 t1 t2 cmd=${2:-mount_cmd}
  now t0
  $cmd >/dev/null 2>>"$log" || die "clipctl mount failed; see $log"
  now t1
  stat "$mnt/etc/os-release" >/dev/null || die "stat in the mount failed"
  now t2
  is_mounted "$mnt" || die "mount not live"
  sample "$1" "$(secs $((t1 - t0)))"
  sample "$1_stat" "$(secs $((t2 - t0)))"
}
# mount_stats PREFIX: fields of the stats file (rewritten every 100 ms).
mount_stats() {
  sleep 0.3
  python3 - "$stats" "$1" >> "$samples" <<'PY'
import json, sys, time
for _ in range(20):
    try:
        s = json.load(open(sys.argv[1])); break
    except (ValueError, OSError):
        time.sleep(0.05)
else:
    sys.exit("bench-v1: cannot read the stats file " + sys.argv[1])
for k in ("bytes_read", "bytes_decoded", "compressed_bytes_read", "spans_decoded"):
    print(f"{sys.argv[2]}_{k} {s.get(k, 0)}")
PY
}
# cat_stats KEY ARCHIVE FILE: compressed bytes a cold `clipctl cat` of FILE reads.
cat_stats() {
  "$clipctl" cat "$2" "$3" --stats 2>"$v/cat.stats" >/dev/null || die "clipctl cat $2 $3 failed"
  sample "$1" "$(tail -1 "$v/cat.stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["compressed_bytes_read"])')"
}

load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench-v1: $RUNS runs (mount ready: $READY_RUNS; load average at start: $load_at_start)" >&2
now t_start
drops_start=$(drops)
tree_files=$(find "$native" -type f | wc -l)
tree_inodes=$(find "$native" | wc -l)
tree_bytes=$(find "$native" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')

# ---------------------------------------------------------------- 1. create, size (hot)
# Other jobs on the machine may drop the caches too: page the tree in again before
# every run (a no-op when it is still cached), and count foreign drops below.
for run in $(seq "$RUNS"); do
  echo "bench-v1: create, run $run/$RUNS" >&2
  tar_tree "$native"; create clip_create "$arch"
  tar_tree "$native"; tar_create tar_create nosync
  tar_tree "$native"; tar_create tar_create_sync sync
done
sample clip_size "$(stat -c %s "$arch")"
sample tar_size "$(stat -c %s "$tarzst")"
"$clipctl" inspect --json "$arch" > "$v/inspect.json"
# Sanity: the archive's files read back as the tree's.
cmp <("$clipctl" cat "$arch" "$SMALL") "$native/$SMALL" || die "clipctl cat $SMALL differs from the tree"

# What the default archive stores raw: chunks zstd could not shrink (frames of raw
# blocks only), and what `zstd -3` makes of those chunks (a check that they really
# are incompressible).
python3 - "$arch" "$v/inspect.json" >> "$samples" <<'PY'
import json, subprocess, sys
info = json.load(open(sys.argv[2]))
data = open(sys.argv[1], "rb").read()
pos = info["meta"]["storage"]["data_offset"]
end = pos + info["layers"][0]["compressed_size"]
frames = raw = raw_bytes = rezstd = 0
while pos < end:
    assert data[pos:pos + 4] == b"\x28\xb5\x2f\xfd", f"no zstd frame at {pos}"
    fhd = data[pos + 4]
    single, fcs, did = (fhd >> 5) & 1, fhd >> 6, fhd & 3
    p = pos + 5 + (0 if single else 1) + [0, 1, 2, 4][did] + [1 if single else 0, 2, 4, 8][fcs]
    only_raw, content = True, bytearray()
    while True:
        bh = int.from_bytes(data[p:p + 3], "little"); p += 3
        kind, size = (bh >> 1) & 3, bh >> 3
        if kind == 0:
            content += data[p:p + size]; p += size
        else:
            only_raw = False; p += 1 if kind == 1 else size
        if bh & 1:
            break
    if (fhd >> 2) & 1:
        p += 4
    frames += 1
    if only_raw:
        raw += 1; raw_bytes += len(content)
        rezstd += len(subprocess.run(["zstd", "-3", "-c", "-q"], input=bytes(content), capture_output=True, check=True).stdout)
    pos = p
print(f"frames {frames}\nraw_frames {raw}\nraw_bytes {raw_bytes}\nraw_rezstd_bytes {rezstd}")
PY

# ---------------------------------------------------------------- 2. mount ready
for run in $(seq "$READY_RUNS"); do
  echo "bench-v1: mount ready, run $run/$READY_RUNS" >&2
  fresh_cache; drop
  ready ready_cold
  do_umount
  fresh_cache
  ready ready_hot
  do_umount
  fresh_cache; drop
  ready v2_ready_cold v2_mount_cmd
  do_umount
  fresh_cache
  ready v2_ready_hot v2_mount_cmd
  do_umount
done

# ---------------------------------------------------------------- 3. reads
for run in $(seq "$RUNS"); do
  echo "bench-v1: reads, run $run/$RUNS" >&2
  for f in small tiny; do
    [ $f = small ] && path=$SMALL || path=$TINY
    fresh_cache; do_mount; drop
    timed "clip_${f}_cold" cat "$mnt/$path"
    mount_stats "clip_${f}_cold"
    timed "clip_${f}_hot" cat "$mnt/$path"
    cmp "$mnt/$path" "$native/$path" || die "$path differs between the mount and the tree"
    do_umount
    drop
    timed "native_${f}_cold" cat "$native/$path"
    timed "native_${f}_hot" cat "$native/$path"
  done
  fresh_cache; do_mount; drop
  timed clip_tar_cold tar_tree "$mnt"
  mount_stats clip_tar_cold
  timed clip_tar_hot tar_tree "$mnt"
  do_umount
  drop
  timed native_tar_cold tar_tree "$native"
  timed native_tar_hot tar_tree "$native"
done

# ---------------------------------------------------------------- 4. chunk-size curve
# Each clip run is paired with a tar.zst run right after it (the load on a shared
# machine changes within minutes).
for cs in $CHUNKS; do
  out=$v/chunk-$cs.clip
  for run in $(seq "$RUNS"); do
    echo "bench-v1: chunk size $cs, run $run/$RUNS" >&2
    tar_tree "$native"; create "curve_${cs}_create" "$out" --chunk-size "$cs"
    tar_tree "$native"; tar_create "curve_${cs}_tar" nosync
  done
  sample "curve_${cs}_size" "$(stat -c %s "$out")"
  cat_stats "curve_${cs}_small_bytes" "$out" "$SMALL"
  cat_stats "curve_${cs}_tiny_bytes" "$out" "$TINY"
  for run in $(seq "$RUNS"); do
    drop
    timed "curve_${cs}_small_cat_cold" "$clipctl" cat "$out" "$SMALL"
  done
  rm -f "$out"
done
now t_end
foreign_drops=$(( $(drops) - drops_start - own_drops ))
t_total=$(secs $((t_end - t_start)))

# ---------------------------------------------------------------- report
BV_RUNS=$RUNS BV_FOREIGN_DROPS=$foreign_drops BV_READY_RUNS=$READY_RUNS BV_LOAD=$load_at_start BV_TOTAL=$t_total BV_FILES=$tree_files \
BV_INODES=$tree_inodes BV_BYTES=$tree_bytes BV_SMALL=$SMALL BV_TINY=$TINY BV_CHUNKS=$CHUNKS \
BV_SMALL_SIZE=$(stat -c %s "$native/$SMALL") BV_TINY_SIZE=$(stat -c %s "$native/$TINY") \
BV_ZSTD=$(zstd --version | head -1) BV_TAR=$(tar --version | head -1) \
PYTHONPATH="$root/scripts" python3 - "$samples" "$v/inspect.json" "$work/v1-results.json" "$root/BENCHMARKS.md" <<'PY'
import json, os, statistics, subprocess, sys
samples, inspect, out, md_path = sys.argv[1:5]
env = os.environ
raw = {}
for line in open(samples):
    k, val = line.split()
    raw.setdefault(k, []).append(float(val))
med = {k: statistics.median(val) for k, val in raw.items()}
info = json.load(open(inspect))
r = dict(runs=int(env["BV_RUNS"]), ready_runs=int(env["BV_READY_RUNS"]), load_at_start=env["BV_LOAD"],
         total_seconds=float(env["BV_TOTAL"]), files=int(env["BV_FILES"]), inodes=int(env["BV_INODES"]),
         tree_bytes=int(env["BV_BYTES"]), median=med, samples=raw)
json.dump(r, open(out, "w"), indent=1)

mib, kib = 1 << 20, 1 << 10
def s(k): return f'{med[k]:.2f} s'
def ms(k): return f'{1000 * med[k]:.1f} ms'
def size(b): return f'{b / mib:.1f} MiB' if b >= mib else f'{b / kib:.1f} KiB'
def x(a, b): return f'{med[a] / med[b]:.2f}x'
def met(ok): return "yes" if ok else "**no**"
small, tiny = env["BV_SMALL"], env["BV_TINY"]
ss, ts = int(env["BV_SMALL_SIZE"]), int(env["BV_TINY_SIZE"])
rows = [
  ("archive size", size(med["clip_size"]), f'tar.zst {size(med["tar_size"])}', x("clip_size", "tar_size"),
   "<= 1.0x", met(med["clip_size"] <= med["tar_size"])),
  ("  chunks stored as raw frames (zstd could not shrink them)",
   f'{med["raw_frames"]:.0f} of {med["frames"]:.0f} chunks, {size(med["raw_bytes"])}',
   f'`zstd -3` of those chunks: {size(med["raw_rezstd_bytes"])} ({size(med["raw_bytes"] - med["raw_rezstd_bytes"])} less)',
   f'{(med["clip_size"] - med["raw_bytes"] + med["raw_rezstd_bytes"]) / med["tar_size"]:.3f}x if compressed', "-", "-"),
  ("create time, tree in the page cache (hot)", s("clip_create"), f'`tar -I \'zstd -T0\'` {s("tar_create")}',
   x("clip_create", "tar_create"), "<= 1.0x", met(med["clip_create"] <= med["tar_create"])),
  ("create time beside tar.zst + `sync` of its output (clip fsyncs its archive)", s("clip_create"),
   f'tar.zst + sync {s("tar_create_sync")}', x("clip_create", "tar_create_sync"), "-", "-"),
  ("create CPU time (user + sys)", f'{med["clip_create_cpu"]:.2f} s', f'tar + zstd -T0 {med["tar_create_cpu"]:.2f} s',
   x("clip_create_cpu", "tar_create_cpu"), "-", "-"),
  ("clipctl archive peak RSS: median (max)", f'{med["clip_create_rss_kb"] / 1024:.1f} MiB ({max(raw["clip_create_rss_kb"]) / 1024:.1f} MiB)',
   "-", "-", "-", "-"),
  ("mount ready: launch of `clipctl mount --daemon` to its return, caches dropped", ms("ready_cold"),
   f'index-only archive of the image {ms("v2_ready_cold")}', x("ready_cold", "v2_ready_cold"), "< 20 ms", met(med["ready_cold"] < 0.020)),
  ("mount ready, hot (again at once)", ms("ready_hot"), f'index-only {ms("v2_ready_hot")}', x("ready_hot", "v2_ready_hot"),
   "< 20 ms", met(med["ready_hot"] < 0.020)),
  ("mount ready + first `stat` of etc/os-release, caches dropped", ms("ready_cold_stat"),
   f'index-only {ms("v2_ready_cold_stat")}', x("ready_cold_stat", "v2_ready_cold_stat"), "-", "-"),
  (f'cold read of {small} ({ss} B), `cat`', ms("clip_small_cold"), f'native cold {ms("native_small_cold")}',
   x("clip_small_cold", "native_small_cold") + " native", "-", "-"),
  (f'  compressed bytes it read (chunks decoded)', size(med["clip_small_cold_compressed_bytes_read"]) +
   f' ({med["clip_small_cold_spans_decoded"]:.0f})', f'file {size(ss)}', "-", "-", "-"),
  (f'hot read of {small}', ms("clip_small_hot"), f'native hot {ms("native_small_hot")}',
   x("clip_small_hot", "native_small_hot") + " native", "-", "-"),
  (f'cold read of {tiny} ({ts} B), `cat`', ms("clip_tiny_cold"), f'native cold {ms("native_tiny_cold")}',
   x("clip_tiny_cold", "native_tiny_cold") + " native", "-", "-"),
  (f'  compressed bytes it read (chunks decoded)', size(med["clip_tiny_cold_compressed_bytes_read"]) +
   f' ({med["clip_tiny_cold_spans_decoded"]:.0f})', f'file {size(ts)}', "-", "-", "-"),
  ("whole-tree `tar -cf - . \\| cat` cold", s("clip_tar_cold"), f'native cold {s("native_tar_cold")}',
   x("clip_tar_cold", "native_tar_cold") + " native", "-", "-"),
  ("  inflated / compressed bytes it read", f'{size(med["clip_tar_cold_bytes_decoded"])} / {size(med["clip_tar_cold_compressed_bytes_read"])}',
   f'tar read {size(med["clip_tar_cold_bytes_read"])} of file data', "-", "-", "-"),
  ("whole-tree tar hot (same mount, again at once)", s("clip_tar_hot"), f'native hot {s("native_tar_hot")}',
   x("clip_tar_hot", "native_tar_hot") + " native", "-", "-"),
]
cols = ["measure", "clip", "baseline (same run)", "ratio", "aim", "aim met"]
table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(row) + " |" for row in rows]

ccols = ["chunk size", "archive size", "vs tar.zst", f"cold read of {small.split('/')[-1]}: compressed bytes",
         f"cold read of {tiny.split('/')[-1]}: compressed bytes", f"cold `clipctl cat {small.split('/')[-1]}`",
         "create time (hot; paired tar.zst run)", "vs tar -I 'zstd -T0'"]
crows = []
for cs in env["BV_CHUNKS"].split():
    c = f"curve_{cs}_create"
    crows.append([cs + (" (default)" if cs == "2MiB" else ""), size(med[f"curve_{cs}_size"]),
                  f'{med[f"curve_{cs}_size"] / med["tar_size"]:.3f}x', size(med[f"curve_{cs}_small_bytes"]),
                  size(med[f"curve_{cs}_tiny_bytes"]), ms(f"curve_{cs}_small_cat_cold"), f'{s(c)} (tar {s(f"curve_{cs}_tar")})', x(c, f"curve_{cs}_tar")])
ctable = ["| " + " | ".join(ccols) + " |", "|" + "---|" * len(ccols)] + ["| " + " | ".join(row) + " |" for row in crows]

cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
ncpu = os.cpu_count()
mem = int(open("/proc/meminfo").readline().split()[1]) // 1024 // 1024
head = (f'`clipctl archive` of the bench image\'s merged root filesystem (debootstrap minbase bookworm + python3 layer, '
        f'made once with `clipctl extract` into bench-work/native: {r["inodes"]} paths, {r["files"]} regular files, '
        f'{r["tree_bytes"] / mib:.1f} MiB of file data) beside `tar -C TREE -I \'zstd -T0\' -cf OUT .` of the same tree '
        f'({env["BV_TAR"]}, {env["BV_ZSTD"].split(",")[0].strip("* ")}, default level 3; clip at its defaults: 2 MiB chunks, level 3, '
        f'threads = cores). Machine: {cpu}, {ncpu} cores, {mem} GiB, shared with other jobs, so figures are noisy; '
        f'load average at start {r["load_at_start"]}. Median of {r["runs"]} runs (mount ready: {r["ready_runs"]}); '
        f'the whole v1 benchmark took {r["total_seconds"]:.0f} s.')
notes = [
  "- *cold*: `sync; echo 3 > /proc/sys/vm/drop_caches` right before the measured command on both sides; for clip after "
  "mounting, with a fresh, empty span cache dir, so the archive comes from disk. *hot*: the same command again at once, "
  "on both sides. Create times are hot: the tree was read once before, so both contenders read it from the page cache; "
  "each writes its output to the same disk (clip fsyncs and renames its archive, tar does not: the row with `sync` shows "
  "what that costs).",
  "- Reads are timed from the launch of `cat FILE > /dev/null` (or the tar pipeline) to its exit, so a process start is in "
  "both sides' figures. Compressed bytes are from the mount's `--stats-file` (the chunks the read decoded); in the curve, "
  "from `clipctl cat --stats` of the file from each archive. The curve's cold `clipctl cat` includes the process start and "
  "reading the archive's metadata from disk.",
  "- Mount ready baseline: the index-only (v2) archive of the same image (bench-work/bench.clip, layers in "
  "bench-work/layout), mounted the same way in the same runs.",
  "- Create CPU time is the work each does (children included for tar); on a loaded machine the wall time also "
  "depends on how well each keeps the cores busy.",
  "- Identical file contents are stored once in a v1 archive (tar stores hardlinks once, but not copies).",
  f'- Caches dropped by other processes on the machine during this benchmark: {env["BV_FOREIGN_DROPS"]} time(s) '
  "(/proc/vmstat drop_pagecache, less this script's own); the tree is paged in again before every hot create run.",
]
spread = sorted(((max(val) / min(val), k) for k, val in raw.items()
                 if len(val) > 1 and min(val) > 0 and not k.endswith(("_kb", "_bytes", "_read", "_decoded", "_size", "_cpu", "frames"))), reverse=True)
noisy = [f'{k} {min(raw[k]):.3g}-{max(raw[k]):.3g} s' for q, k in spread if q > 1.3]
if noisy:
    notes.append("- Noisiest this run (max/min over the runs > 1.3): " + "; ".join(noisy) + ".")
section = ["## v1 archives (issue 10)", "", head, "", *table, "", "Chunk size (`clipctl archive --chunk-size`): "
           "what it trades, same tree, same run.", "", *ctable, "", *notes, ""]
print(head); print(); print("\n".join(table)); print(); print("\n".join(ctable)); print(); print("\n".join(notes))
from bench_md import write_section
write_section(md_path, section)
PY

#!/usr/bin/env bash
# Mount benchmarks (issue 4): clip's FUSE mount of the bench image against the same
# tree unpacked on local disk, zcat and ratarmount, all measured in this run on this
# machine; nydus figures are the issue's reference numbers (text, not measured here).
# Called by scripts/bench.sh after the indexing part (which builds bench-work/layout
# and bench-work/bench.clip); runs alone too. Times are the median of $RUNS runs.
# Writes bench-work/mount-results.json, prints a table and (re)writes the section
# "## Mount (issue 4)" of BENCHMARKS.md, keeping everything before it.
#
# cold = fresh span cache dir and `echo 3 > /proc/sys/vm/drop_caches` right before the
#        measured command (native and zcat: caches dropped too);
# warm = remount with the span cache of the cold run, caches dropped (clip serves
#        file data from its on-disk span cache); compared with native cold;
# hot  = the same mount again, nothing dropped; compared with native hot.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
RUNS=${RUNS:-3}
work=$root/bench-work
clipctl=$root/target/release/clipctl
layout=$work/layout
clip=$work/bench.clip
native=$work/native
m=$work/mount                      # everything this script mounts lives under here
cmnt=$m/clip-mnt ccache=$m/clip-cache cstats=$m/clip-stats.json
rmnt=$m/rat-mnt ridx=$m/rat-index
ratvenv=$work/venv-ratarmount
rat=$ratvenv/bin/ratarmount
samples=$m/samples.txt log=$m/bench-mount.log
PY_PROG='import json, ssl, sqlite3, asyncio'

die() { echo "bench-mount: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (drop_caches, chroot, FUSE)"
[ -x "$clipctl" ] || die "$clipctl missing: build first (make build)"
[ -f "$clip" ] || die "$clip missing: run scripts/bench.sh (it indexes the bench image)"
command -v fusermount >/dev/null || command -v fusermount3 >/dev/null || die "fusermount missing"

mapfile -t layers < <(python3 "$root/scripts/bench-layers.py" "$layout")

# ---------------------------------------------------------------- mounts and cleanup
is_mounted() { awk -v p="$1" '$2 == p { f = 1 } END { exit !f }' /proc/mounts; }
our_mounts() { awk -v p="$m/" 'index($2, p) == 1 { print $2 }' /proc/mounts; }
# Live (non-zombie) pids whose command line matches $1.
pids_of() {
  local p
  for p in $(pgrep -f -- "$1" || true); do
    [ "$p" = "$$" ] && continue
    [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null || echo Z)" = Z ] || echo "$p"
  done
}
# Waits (up to 10 s) for the given pids to exit; zombies count as exited.
wait_gone() {
  local p i
  for p in "$@"; do
    for i in $(seq 100); do
      [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null || echo Z)" = Z ] && break
      sleep 0.1
    done
  done
}
clip_pid() { pids_of "clipctl mount $clip $cmnt " | head -1; }
rat_pid() { pids_of "ratarmount .*--index-folders $ridx " | head -1; }

force_unmount() {
  local mp=$1
  is_mounted "$mp" || return 0
  if [ "$mp" = "$cmnt" ]; then "$clipctl" umount "$mp" >/dev/null 2>&1 || true; fi
  is_mounted "$mp" && { fusermount -u "$mp" 2>/dev/null || fusermount3 -u "$mp" 2>/dev/null || true; }
  is_mounted "$mp" && { sleep 0.5; umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true; }
  return 0
}
exec 3>&2   # cleanup() may run inside a redirection of stderr to the log
cleanup() {
  local rc=$? mp p left
  trap - EXIT INT TERM
  exec 2>&3
  [ "$rc" = 0 ] || echo "bench-mount: stopping (exit $rc); unmounting everything under $m" >&2
  for mp in $(our_mounts); do force_unmount "$mp"; done
  # Daemons of ours that outlived their mount (by pid, matched on our own paths).
  for p in $(pids_of "clipctl mount $clip $cmnt ") $(pids_of "ratarmount .*--index-folders $ridx "); do
    kill "$p" 2>/dev/null || true
  done
  left=$(our_mounts)
  if [ -n "$left" ]; then
    echo "bench-mount: ERROR: mounts left behind: $left" >&2
    rc=1
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers
# now VAR: the wall clock in microseconds into VAR (no fork: the ready times are ~10 ms).
now() { printf -v "$1" '%s' "${EPOCHREALTIME/[.,]/}"; }
sample() { echo "$1 $2" >> "$samples"; }
drop() {
  sync
  echo 3 > /proc/sys/vm/drop_caches || die "cannot drop the page cache"
}
# timed KEY CMD...: runs CMD (stdout discarded), records its wall time in seconds.
timed() {
  local key=$1; shift
  local t0 t1
  now t0
  if ! "$@" >/dev/null 2>>"$log"; then
    echo "bench-mount: '$*' failed (for $key); see $log" >&2
    return 1
  fi
  now t1
  sample "$key" "$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.6f", d / 1e6 }')"
}
find_tree() { find "$1" -printf '%s %m\n'; }
tar_tree() { tar -C "$1" -cf - . | cat > /dev/null; }
py_start() { chroot "$1" python3 -c "$PY_PROG"; }
zcat_layers() { local l; for l in "${layers[@]}"; do zcat < "$l" > /dev/null; done; }
# ready PREFIX MNT CMD...: launch-to-return time of the mount command CMD as
# PREFIX_ready, and launch to the first stat of MNT/etc/os-release as PREFIX_stat.
ready() {
  local key=$1 mp=$2; shift 2
  local t0 t1 t2
  now t0
  "$@" >/dev/null 2>>"$log" || return 1
  now t1
  stat "$mp/etc/os-release" >/dev/null || return 1
  now t2
  is_mounted "$mp" || return 1
  sample "${key}_ready" "$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.6f", d / 1e6 }')"
  sample "${key}_stat" "$(awk -v d=$((t2 - t0)) 'BEGIN { printf "%.6f", d / 1e6 }')"
}
clip_mount_cmd() { "$clipctl" mount "$clip" "$cmnt" --layout "$layout" --cache-dir "$ccache" --daemon --stats-file "$cstats"; }
clip_mount() { clip_mount_cmd >/dev/null 2>>"$log" || die "clipctl mount failed; see $log"; is_mounted "$cmnt" || die "clip mount not live"; }
clip_umount() {
  local p; p=$(clip_pid)
  "$clipctl" umount "$cmnt" 2>>"$log" || die "clipctl umount failed"
  [ -z "$p" ] || wait_gone "$p"
  ! is_mounted "$cmnt" || die "$cmnt still mounted after clipctl umount"
}
fresh_cache() { rm -rf "$ccache" "$cstats"; }
# rss PREFIX PID: VmRSS, VmHWM, RssAnon and RssFile in kB.
rss() {
  [ -n "$2" ] && [ -r "/proc/$2/status" ] || die "no $1 mount process found for the RSS"
  local f
  for f in VmRSS VmHWM RssAnon RssFile; do
    sample "$1_${f,,}_kb" "$(awk -v f="$f:" '$1 == f { print $2 }' "/proc/$2/status")"
  done
}
# clip_stats PREFIX: records fields of the stats file (rewritten every 100 ms).
clip_stats() {
  sleep 0.3
  python3 - "$cstats" "$1" >> "$samples" <<'PY'
import json, sys, time
for _ in range(20):
    try:
        s = json.load(open(sys.argv[1]))
        break
    except (ValueError, OSError):
        time.sleep(0.05)
else:
    sys.exit("bench-mount: cannot read the stats file " + sys.argv[1])
for k in ("bytes_read", "bytes_decoded", "compressed_bytes_read", "spans_decoded", "fetches", "disk_hits"):
    print(f"{sys.argv[2]}_{k} {s.get(k, 0)}")
PY
}

# ---------------------------------------------------------------- setup
# Stale mounts from an interrupted earlier run would skew everything: clear them.
for mp in $(our_mounts); do echo "bench-mount: unmounting stale $mp" >&2; force_unmount "$mp"; done
[ -z "$(our_mounts)" ] || die "stale mounts under $m: $(our_mounts)"
rm -rf "$m"; mkdir -p "$m" "$cmnt" "$rmnt"
: > "$samples"; : > "$log"

# The native tree: the image's merged tree on local disk, made once per image.
stamp=$(printf '%s\n' "${layers[@]##*/}")
if [ ! -d "$native" ] || [ "$(cat "$work/native.done" 2>/dev/null)" != "$stamp" ]; then
  echo "bench-mount: extracting the native tree to $native" >&2
  rm -rf "$native" "$work/native.done"
  "$clipctl" extract "$clip" "$native" --layout "$layout" >/dev/null 2>>"$log"
  echo "$stamp" > "$work/native.done"
fi

# ratarmount in its own venv: ratarmountcore pins rapidgzip~=0.15, which would
# downgrade the rapidgzip 0.16 that the indexing benchmark uses in bench-work/venv.
rat_error=""
if [ ! -x "$rat" ]; then
  echo "bench-mount: installing ratarmount into $ratvenv" >&2
  rm -rf "$ratvenv"
  if ! { python3 -m venv "$ratvenv" && timeout 600 "$ratvenv/bin/pip" install -q ratarmount; } > "$m/ratarmount-install.log" 2>&1; then
    rat_error="could not be installed (pip install ratarmount failed)"
    rm -rf "$ratvenv"
  fi
fi
rat_version=""
if [ -z "$rat_error" ]; then
  rat_version=$("$ratvenv/bin/python" -c 'import importlib.metadata as m; print(m.version("ratarmount"))' 2>/dev/null) \
    || rat_error="installed but does not run"
fi
rat_mount() { timeout 300 "$rat" -P 0 --index-folders "$ridx" "${layers[@]}" "$rmnt"; }
rat_umount() {
  local p; p=$(rat_pid)
  is_mounted "$rmnt" && { fusermount -u "$rmnt" 2>>"$log" || fusermount3 -u "$rmnt" 2>>"$log" || return 1; }
  [ -z "$p" ] || wait_gone "$p"
  ! is_mounted "$rmnt"
}
# One run of every ratarmount measurement; returns non-zero on the first failure.
rat_run() {
  # First mount, index creation included (index removed first).
  rm -rf "$ridx"; mkdir -p "$ridx"
  drop
  ready rat_first "$rmnt" rat_mount || return 1
  rat_umount || return 1
  # Second mount: index cached.
  drop
  ready rat_second "$rmnt" rat_mount || return 1
  drop
  timed rat_find_cold find_tree "$rmnt" || return 1
  rat_umount || return 1
  rat_mount >/dev/null 2>>"$log" || return 1
  drop
  timed rat_tar_cold tar_tree "$rmnt" || return 1
  local p; p=$(rat_pid)
  [ -n "$p" ] && rss rat "$p"
  rat_umount || return 1
  rat_mount >/dev/null 2>>"$log" || return 1
  drop
  timed rat_py_cold py_start "$rmnt" || return 1
  rat_umount || return 1
}

load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench-mount: $RUNS runs (load average at start: $load_at_start)" >&2
now t_start
for run in $(seq "$RUNS"); do
  echo "bench-mount: run $run/$RUNS" >&2
  # 1. Mount-ready, caches dropped (binary and archive come from disk too) ...
  fresh_cache; drop
  ready clip_cold "$cmnt" clip_mount_cmd || die "clip mount-ready measurement failed; see $log"
  clip_umount
  # ... and with the binary and the archive in the page cache (fresh span cache).
  fresh_cache
  cat "$clipctl" "$clip" > /dev/null
  ready clip_hotbin "$cmnt" clip_mount_cmd || die "clip mount-ready measurement failed; see $log"
  clip_umount

  # 2. find: cold, hot (same mount), warm (remount, caches dropped).
  fresh_cache; clip_mount; drop
  timed clip_find_cold find_tree "$cmnt" || die "find on clip failed"
  timed clip_find_hot find_tree "$cmnt" || die "find on clip failed"
  clip_umount; clip_mount; drop
  timed clip_find_warm find_tree "$cmnt" || die "find on clip failed"
  clip_umount
  drop; timed native_find_cold find_tree "$native"
  timed native_find_hot find_tree "$native"

  # 3. whole-tree tar: cold (then RSS), hot, warm; native; zcat of the layers.
  fresh_cache; clip_mount; rss clip_idle "$(clip_pid)"; drop
  timed clip_tar_cold tar_tree "$cmnt" || die "tar of the clip mount failed"
  rss clip "$(clip_pid)"
  clip_stats clip_tar_cold
  timed clip_tar_hot tar_tree "$cmnt" || die "tar of the clip mount failed"
  clip_umount; clip_mount; drop
  timed clip_tar_warm tar_tree "$cmnt" || die "tar of the clip mount failed"
  clip_umount
  drop; timed native_tar_cold tar_tree "$native"
  timed native_tar_hot tar_tree "$native"
  drop; timed zcat_cold zcat_layers

  # 4. cold start of a real program.
  fresh_cache; clip_mount; drop
  timed clip_py_cold py_start "$cmnt" || die "python3 in the clip mount failed"
  clip_stats clip_py_cold
  clip_umount
  drop; timed native_py_cold py_start "$native"

  # 6. ratarmount; a failure is reported in the table, not fatal.
  if [ -z "$rat_error" ] && ! rat_run; then
    rat_error="failed during the run (see bench-work/mount/bench-mount.log)"
    rat_umount || force_unmount "$rmnt"
  fi
done
now t_end
t_total=$(awk -v d=$((t_end - t_start)) 'BEGIN { printf "%.1f", d / 1e6 }')
[ -z "$(our_mounts)" ] || die "mounts left behind after the runs: $(our_mounts)"

files=$("$clipctl" inspect --json "$clip" | python3 -c 'import json,sys; print(json.load(sys.stdin)["inodes"])')
native_files=$(find "$native" | wc -l)
rat_files="" rat_wh=""
if [ -z "$rat_error" ] && rat_mount >/dev/null 2>>"$log"; then
  rat_files=$(find "$rmnt" | wc -l)
  rat_wh=$(find "$rmnt" -name '.wh.*' | wc -l)
  rat_umount || force_unmount "$rmnt"
fi

BM_RUNS=$RUNS BM_FILES=$files BM_NATIVE_FILES=$native_files BM_RAT_FILES=$rat_files BM_RAT_WH=$rat_wh BM_RAT_ERROR=$rat_error \
BM_RAT_VERSION=$rat_version BM_LOAD=$load_at_start BM_TOTAL=$t_total BM_LAYERS=${#layers[@]} BM_PY_PROG=$PY_PROG BM_LAYER0=${layers[0]} \
python3 - "$samples" "$work/mount-results.json" "$root/BENCHMARKS.md" <<'PY'
import json, os, statistics, subprocess, sys
samples, out, md_path = sys.argv[1:4]
env = os.environ
raw = {}
for line in open(samples):
    k, v = line.split()
    raw.setdefault(k, []).append(float(v))
med = {k: statistics.median(v) for k, v in raw.items()}
r = dict(runs=int(env["BM_RUNS"]), files=int(env["BM_FILES"]), native_files=int(env["BM_NATIVE_FILES"]),
         rat_files=env["BM_RAT_FILES"], rat_whiteouts=env["BM_RAT_WH"], rat_error=env["BM_RAT_ERROR"], rat_version=env["BM_RAT_VERSION"],
         load_at_start=env["BM_LOAD"], total_seconds=float(env["BM_TOTAL"]), layers=int(env["BM_LAYERS"]),
         median=med, samples=raw)
json.dump(r, open(out, "w"), indent=1)

mib = 1 << 20
def s(k):  return f'{med[k]:.2f} s'
def ms(k): return f'{1000*med[k]:.1f} ms'
def x(a, b): return f'{med[a]/med[b]:.2f}x'
def yes(ok): return "met" if ok else "**missed**"
rat_ok = not r["rat_error"] and "rat_tar_cold" in med
na = "n/a" if r["rat_error"] else "-"
def rat(f):
    return f() if rat_ok else (f'not measured: {r["rat_error"]}' if r["rat_error"] else "-")

files = r["files"]
rss, hwm = med["clip_vmrss_kb"] * 1024, med["clip_vmhwm_kb"] * 1024
per_file, per_file_hwm = (rss - 16 * mib) / files, (hwm - 16 * mib) / files
rss_aim = 16 * mib + 100 * files
py_mib = lambda k: med[k] / mib
rows = [
  ("mount ready: launch of `clipctl mount --daemon` to its return, caches dropped", ms("clip_cold_ready"), "-", "-",
   rat(lambda: f'{s("rat_first_ready")} first mount incl. index creation; {s("rat_second_ready")} index cached'),
   "37 ms", "< 20 ms", yes(med["clip_cold_ready"] < 0.020)),
  ("mount ready + first `stat` of etc/os-release, caches dropped", ms("clip_cold_stat"), "-", "-",
   rat(lambda: f'{s("rat_first_stat")} first; {s("rat_second_stat")} index cached'), "-", "-", "-"),
  ("mount ready, clipctl binary and archive in the page cache", ms("clip_hotbin_ready"), "-", "-", "-", "37 ms", "< 20 ms",
   yes(med["clip_hotbin_ready"] < 0.020)),
  ("mount ready + first `stat`, binary and archive in the page cache", ms("clip_hotbin_stat"), "-", "-", "-", "-", "-", "-"),
  ("`find -printf '%s %m'` cold", s("clip_find_cold"), f'native cold {s("native_find_cold")}', x("clip_find_cold", "native_find_cold") + " native",
   rat(lambda: f'{s("rat_find_cold")} ({x("rat_find_cold", "native_find_cold")} native)'),
   "4.6x native", "<= 2x native", yes(med["clip_find_cold"] <= 2 * med["native_find_cold"])),
  ("`find` warm (remount, same span cache, caches dropped)", s("clip_find_warm"), f'native cold {s("native_find_cold")}', x("clip_find_warm", "native_find_cold") + " native", "-", "-", "-", "-"),
  ("`find` hot (same mount, second pass)", s("clip_find_hot"), f'native hot {s("native_find_hot")}', x("clip_find_hot", "native_find_hot") + " native", "-", "-", "-", "-"),
  ("whole-tree `tar -cf - . \\| cat` cold", s("clip_tar_cold"),
   f'zcat of all layers (cold) {s("zcat_cold")}; native cold {s("native_tar_cold")}',
   f'{x("clip_tar_cold", "zcat_cold")} zcat; {x("clip_tar_cold", "native_tar_cold")} native',
   rat(lambda: f'{s("rat_tar_cold")} ({x("rat_tar_cold", "zcat_cold")} zcat)'),
   "0.85x zcat", "<= 0.6x zcat", yes(med["clip_tar_cold"] <= 0.6 * med["zcat_cold"])),
  ("whole-tree tar warm (remount, same span cache, caches dropped)", s("clip_tar_warm"), f'native cold {s("native_tar_cold")}',
   x("clip_tar_warm", "native_tar_cold") + " native", "-", "2.1x native", "<= 1.5x native",
   yes(med["clip_tar_warm"] <= 1.5 * med["native_tar_cold"])),
  ("whole-tree tar hot (same mount, second pass)", s("clip_tar_hot"), f'native hot {s("native_tar_hot")}',
   x("clip_tar_hot", "native_tar_hot") + " native", "-", "-", "-", "-"),
  ("cold `chroot MNT python3 -c '" + env["BM_PY_PROG"] + "'`", s("clip_py_cold"), f'native cold {s("native_py_cold")}',
   x("clip_py_cold", "native_py_cold") + " native",
   rat(lambda: f'{s("rat_py_cold")} ({x("rat_py_cold", "native_py_cold")} native)'),
   "0.36 s (3.3x native)", "< 0.36 s (faster than nydus)",
   f'{yes(med["clip_py_cold"] < 0.36)}; as a ratio to native: '
   f'{yes(med["clip_py_cold"] < 3.3 * med["native_py_cold"])} ({x("clip_py_cold", "native_py_cold")} vs 3.3x)'),
  ("cold python start: data clip inflated / compressed bytes it read",
   f'{py_mib("clip_py_cold_bytes_decoded"):.1f} MiB inflated ({med["clip_py_cold_spans_decoded"]:.0f} spans) / {py_mib("clip_py_cold_compressed_bytes_read"):.1f} MiB compressed',
   f'python read {py_mib("clip_py_cold_bytes_read"):.1f} MiB of file data',
   f'{med["clip_py_cold_bytes_decoded"]/max(med["clip_py_cold_bytes_read"],1):.1f}x inflated / read', "-", "-", "-", "-"),
  ("cold whole-tree tar: data clip inflated / compressed bytes it read",
   f'{py_mib("clip_tar_cold_bytes_decoded"):.1f} MiB / {py_mib("clip_tar_cold_compressed_bytes_read"):.1f} MiB',
   f'tar read {py_mib("clip_tar_cold_bytes_read"):.1f} MiB of file data', "-", "-", "-", "-", "-"),
  ("mount process RSS after the cold tar: VmRSS (peak VmHWM); anon / file-backed",
   f'{rss/mib:.1f} MiB ({hwm/mib:.1f} MiB); {med["clip_rssanon_kb"]/1024:.1f} / {med["clip_rssfile_kb"]/1024:.1f} MiB',
   f'right after mounting: {med["clip_idle_vmrss_kb"]/1024:.1f} MiB', "-",
   rat(lambda: f'{med["rat_vmrss_kb"]/1024:.1f} MiB ({med["rat_vmhwm_kb"]/1024:.1f} MiB)'),
   "23-56 MB", f'< {rss_aim/mib:.1f} MiB (16 MiB + 100 B x {files} files)', yes(rss < rss_aim)),
  ("RSS per file: (RSS - 16 MiB) / files", f'{per_file:.0f} B/file (VmHWM: {per_file_hwm:.0f})', "-", "-", "-", "-", "< 100 B/file", yes(per_file < 100)),
]
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
ncpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
head = (f'The bench image above ({r["layers"]} gzip layers, {files} inodes), mounted with `clipctl mount --daemon` '
        f'against the same merged tree on local disk ("native", made once with `clipctl extract`), zcat and '
        f'ratarmount {r["rat_version"] or "(not available)"}. Machine: {cpu}, {ncpu} cores; load average at start '
        f'{r["load_at_start"]}. Median of {r["runs"]} runs; the whole mount benchmark took {r["total_seconds"]:.0f} s.')
def slow_drive():
    # ratarmountcore's is_on_slow_drive: the block device of the file says rotational.
    try:
        d = os.stat(env["BM_LAYER0"]).st_dev
        return open(f"/sys/dev/block/{os.major(d)}:{os.minor(d)}/queue/rotational").read().strip() == "1"
    except OSError:
        return False
notes = [
  "- *cold*: fresh span cache dir, and `echo 3 > /proc/sys/vm/drop_caches` right before the measured command "
  "(for clip after mounting, so the archive and the layer blobs come from disk); native and zcat have the caches dropped too. "
  "*warm*: remount with the span cache the cold run filled, caches dropped: file data comes from the on-disk span cache; "
  "compared with native cold (both read local disk). *hot*: the same mount again, nothing dropped.",
  "- zcat: `zcat` of every layer blob one after another, caches dropped (the indexing table above has it with the layers in the page cache).",
  "- RSS: /proc/PID/status of the `clipctl mount` daemon right after the cold whole-tree tar (and right after mounting, before any read); aim 16 MiB + 100 B per file.",
  "- ratarmount: `ratarmount -P 0 --index-folders DIR layer1 layer2 MNT`, a union mount of the two gzip layer blobs as "
  "they are (rapidgzip backend, default 16 MiB seek-point spacing), installed in bench-work/venv-ratarmount. " +
  ("The disk holding the layers reports itself rotational, and ratarmount then decodes with one thread whatever -P says. "
   if slow_drive() else "") +
  "It does not apply OCI whiteouts (a file deleted by a later layer would stay visible, the .wh. marker too); "
  f'here it shows {r["rat_files"] or "?"} paths ({r["rat_whiteouts"] or "?"} of them .wh. markers) against '
  f'{r["native_files"]} in the native tree' + (", so for this image the union has the merged tree's paths. "
  if r["rat_whiteouts"] == "0" and r["rat_files"] == str(r["native_files"]) else ". ") +
  "\"first mount\" deletes its index first, so it includes index creation; find, tar and python run on a mount with the index cached. "
  "Its RSS is taken after its cold tar like clip's.",
  "- nydus zran: the issue's reference figures, measured by the issue's author on such an image on this machine type; not measured in this run.",
]
spread = sorted(((max(v)/min(v), k) for k, v in raw.items() if len(v) > 1 and min(v) > 0 and not k.endswith(("_kb", "_bytes_read", "_decoded", "_fetches", "_hits"))), reverse=True)
noisy = [f'{k} {min(raw[k]):.3g}-{max(raw[k]):.3g} s' for q, k in spread if q > 1.3]
if noisy:
    notes.append("- Noisiest this run (max/min over the runs > 1.3): " + "; ".join(noisy) + ".")
cols = ["measure", "clip", "baseline (same run)", "clip vs baseline", "ratarmount", "nydus zran (issue)", "aim", "aim met"]
table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(row) + " |" for row in rows]
section = ["## Mount (issue 4)", "", head, "", *table, "", *notes, ""]
print(head); print(); print("\n".join(table)); print(); print("\n".join(notes))
try:
    old = open(md_path).read()
except FileNotFoundError:
    old = "# Benchmarks\n\n"
keep = old.split("\n## Mount (issue 4)")[0].rstrip("\n") + "\n\n"
open(md_path, "w").write(keep + "\n".join(section))
PY

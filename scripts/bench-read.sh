#!/usr/bin/env bash
# Read-path benchmarks (issue 14): every row of the issue's table beside its baseline,
# measured in this run on this machine, on two images:
#  - realistic: the bench image (scripts/bench-image.sh: 2 gzip layers, debootstrap
#    minbase + python3), its archive bench-work/bench.clip and its merged tree on disk
#    (bench-work/native), made here when missing;
#  - scale: one gzip layer of about 166,000 entries shaped like node_modules, generated
#    here by scripts/bench-scale-image.py (seeded, so always the same image).
# Called by scripts/bench.sh; runs alone too. Times are medians of $RUNS runs (mount
# ready: of max($RUNS, 5)). Writes bench-work/read-results.json, prints the table and
# (re)writes the section "## Read path (issue 14)" of BENCHMARKS.md.
#
# cold = `sync; echo 3 > /proc/sys/vm/drop_caches` right before the measured command,
#        on both sides (clip: after mounting, with a fresh, empty span cache dir);
# hot  = the same command again at once, on both sides (for tar after a `sync` on both
#        sides: clip's first pass leaves span cache files to write back);
# page cache warm = the inputs (layers, archive, binary) read once just before.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
RUNS=${RUNS:-3}
READY_RUNS=$(( RUNS > 5 ? RUNS : 5 ))
work=$root/bench-work
clipctl=$root/target/release/clipctl
layout=$work/layout clip=$work/bench.clip native=$work/native
slayout=$work/scale-layout sclip=$work/scale.clip snative=$work/scale-native
r=$work/read                         # everything this script mounts lives under here
mnt=$r/mnt cache=$r/cache
samples=$r/samples.txt log=$r/bench-read.log

die() { echo "bench-read: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (drop_caches, FUSE)"
[ -x "$clipctl" ] || die "$clipctl missing: build first (make build)"

# ---------------------------------------------------------------- images and trees
mkdir -p "$work"
"$root/scripts/bench-image.sh" "$layout"
python3 "$root/scripts/bench-scale-image.py" "$slayout"
if [ ! -x "$work/venv/bin/rapidgzip" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q rapidgzip
fi
rapidgzip=$work/venv/bin/rapidgzip
mapfile -t layers < <(python3 "$root/scripts/bench-layers.py" "$layout")
mapfile -t slayers < <(python3 "$root/scripts/bench-layers.py" "$slayout" scale)
[ -f "$clip" ] || "$clipctl" index-layout --layout "$layout" --tag bench --out "$clip" >/dev/null
"$clipctl" index-layout --layout "$slayout" --tag scale --out "$sclip" >/dev/null
# Same tree and stamp as bench-mount.sh and bench-v1.sh, so they share it.
extract_once() { # CLIP LAYOUT TREE LAYERS...
  local c=$1 l=$2 t=$3; shift 3
  local stamp; stamp=$(printf '%s\n' "${@##*/}")
  if [ ! -d "$t" ] || [ "$(cat "$t.done" 2>/dev/null)" != "$stamp" ]; then
    echo "bench-read: extracting the native tree to $t" >&2
    rm -rf "$t" "$t.done"
    "$clipctl" extract "$c" "$t" --layout "$l" >/dev/null
    echo "$stamp" > "$t.done"
  fi
}
extract_once "$clip" "$layout" "$native" "${layers[@]}"
extract_once "$sclip" "$slayout" "$snative" "${slayers[@]}"

# ---------------------------------------------------------------- mounts and cleanup
is_mounted() { awk -v p="$1" '$2 == p { f = 1 } END { exit !f }' /proc/mounts; }
mount_pid() { pgrep -f -- "clipctl mount .* $mnt " | head -1; }
cleanup() {
  local rc=$?
  trap - EXIT
  if is_mounted "$mnt"; then
    "$clipctl" umount "$mnt" >/dev/null 2>&1 || fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
is_mounted "$mnt" && { "$clipctl" umount "$mnt" || umount -l "$mnt"; }
rm -rf "$r"; mkdir -p "$mnt"; : > "$samples"; : > "$log"

now() { printf -v "$1" '%s' "${EPOCHREALTIME/[.,]/}"; }
sample() { echo "$1 $2" >> "$samples"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches || die "cannot drop the page cache"; }
# timed KEY CMD...: wall time of CMD (stdout discarded) in seconds.
timed() {
  local key=$1 t0 t1; shift
  now t0
  "$@" >/dev/null 2>>"$log" || die "'$*' failed (for $key); see $log"
  now t1
  sample "$key" "$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.6f", d / 1e6 }')"
}
# peak KEY CMD...: wall time and peak RSS (kB) of CMD.
peak() {
  local key=$1; shift
  /usr/bin/time -o "$r/time.out" -f "%e %M" "$@" >/dev/null 2>>"$log" || die "'$*' failed (for $key); see $log"
  read -r t kb < <(tail -1 "$r/time.out")
  sample "$key" "$t"; sample "${key}_rss_kb" "$kb"
}
find_tree() { find "$1" -printf '%s %m\n'; }
tar_tree() { tar -C "$1" -cf - . | cat > /dev/null; }
zcat_all() { local l; for l in "$@"; do zcat < "$l" > /dev/null; done; }
# rapidgzip of each layer in turn (LAYERS... follow), as a command /usr/bin/time runs.
rgz_all=(sh -c 'r=$1 i=$2; shift 2; for l; do "$r" -P 2 -f --export-index "$i" "$l" || exit 1; done' rgz "$rapidgzip" "$r/rgz.idx")
mount_cmd() { "$clipctl" mount "$1" "$mnt" --layout "$2" --cache-dir "$cache" --daemon; }
do_mount() { rm -rf "$cache"; mount_cmd "$@" >/dev/null 2>>"$log" || die "clipctl mount $1 failed; see $log"; }
do_umount() {
  local p; p=$(mount_pid)
  "$clipctl" umount "$mnt" 2>>"$log" || die "clipctl umount failed"
  while [ -n "$p" ] && kill -0 "$p" 2>/dev/null; do sleep 0.05; done
}
hwm() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$(mount_pid)/status"; }

load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench-read: $RUNS runs (load average at start: $load_at_start)" >&2
now t_start
for run in $(seq "$RUNS"); do
  echo "bench-read: run $run/$RUNS" >&2
  # Realistic image: whole-tree tar hot and cold; zcat cold; index beside rapidgzip.
  # (sync between the passes on both sides: the first pass through clip leaves its
  # span cache files to write back, which is not the hot read being measured)
  do_mount "$clip" "$layout"
  tar_tree "$mnt"; sync
  timed r_tar_hot tar_tree "$mnt"
  do_umount
  tar_tree "$native"; sync; timed r_native_tar_hot tar_tree "$native"
  do_mount "$clip" "$layout"; drop
  timed r_tar_cold tar_tree "$mnt"
  do_umount
  drop; timed r_zcat_cold zcat_all "${layers[@]}"
  cat "${layers[@]}" > /dev/null
  peak r_index "$clipctl" index-layout --layout "$layout" --tag bench --out "$r/r.clip"
  peak r_rgz "${rgz_all[@]}" "${layers[@]}"

  # Scale image: index; find cold (then the mount's peak RSS) and hot; native find.
  cat "${slayers[@]}" > /dev/null
  peak s_index "$clipctl" index-layout --layout "$slayout" --tag scale --out "$r/s.clip"
  peak s_rgz "${rgz_all[@]}" "${slayers[@]}"
  do_mount "$sclip" "$slayout"; drop
  timed s_find_cold find_tree "$mnt"
  sample s_mount_hwm_kb "$(hwm)"
  timed s_find_hot find_tree "$mnt"
  do_umount
  find_tree "$snative" > /dev/null; timed s_native_find_hot find_tree "$snative"
  tar_tree "$snative"; sync; timed s_native_tar_hot tar_tree "$snative"
  do_mount "$sclip" "$slayout"; tar_tree "$mnt"; sync
  timed s_tar_hot tar_tree "$mnt"
  do_umount
done
# Mount ready with the page cache warm (binary, archive and layers read just before).
for run in $(seq "$READY_RUNS"); do
  for img in r s; do
    if [ $img = r ]; then c=$clip l=$layout; else c=$sclip l=$slayout; fi
    rm -rf "$cache"; cat "$clipctl" "$c" > /dev/null
    timed ${img}_ready mount_cmd "$c" "$l"
    do_umount
  done
done
now t_end
t_total=$(awk -v d=$((t_end - t_start)) 'BEGIN { printf "%.1f", d / 1e6 }')

inodes() { "$clipctl" inspect --json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["inodes"])'; }
BR_RUNS=$RUNS BR_READY_RUNS=$READY_RUNS BR_LOAD=$load_at_start BR_TOTAL=$t_total \
BR_R_FILES=$(inodes "$clip") BR_S_FILES=$(inodes "$sclip") \
BR_R_COMP=$(cat "${layers[@]}" | wc -c) BR_S_COMP=$(cat "${slayers[@]}" | wc -c) BR_R_LAYERS=${#layers[@]} \
python3 - "$samples" "$work/read-results.json" "$root/BENCHMARKS.md" <<'PY'
import json, os, subprocess, sys
sys.path.insert(0, os.path.join(os.path.dirname(sys.argv[3]), "scripts"))
from bench_md import noisiest, read_samples, write_section
samples, out, md_path = sys.argv[1:4]
env = os.environ
raw, med = read_samples(samples)
rf, sf = int(env["BR_R_FILES"]), int(env["BR_S_FILES"])
json.dump(dict(median=med, samples=raw, files=dict(realistic=rf, scale=sf)), open(out, "w"), indent=1)
mib = 1 << 20
def s(k): return f'{med[k]:.2f} s'
def ms(k): return f'{1000*med[k]:.1f} ms'
def mb(k): return f'{med[k]/1024:.1f} MiB'
def x(a, b): return med[a] / med[b]
def met(ok): return "met" if ok else "**missed**"
rbud, sbud = 64 * mib + 300 * sf, 16 * mib + 100 * sf
rows = [
  ("hot whole-tree `tar -cf - . \\| cat`, realistic", s("r_tar_hot"), f'native hot {s("r_native_tar_hot")}',
   f'{x("r_tar_hot", "r_native_tar_hot"):.2f}x native', "<= 1.2x", met(x("r_tar_hot", "r_native_tar_hot") <= 1.2)),
  ("hot whole-tree tar, scale", s("s_tar_hot"), f'native hot {s("s_native_tar_hot")}',
   f'{x("s_tar_hot", "s_native_tar_hot"):.2f}x native', "-", "-"),
  ("hot `find -printf '%s %m'`, scale", s("s_find_hot"), f'native hot {s("s_native_find_hot")}',
   f'{x("s_find_hot", "s_native_find_hot"):.2f}x native', "<= 1.2x", met(x("s_find_hot", "s_native_find_hot") <= 1.2)),
  ("cold whole-tree tar, realistic", s("r_tar_cold"), f'cold zcat of the layers {s("r_zcat_cold")}',
   f'{x("r_tar_cold", "r_zcat_cold"):.2f}x zcat', "<= 0.6x", met(x("r_tar_cold", "r_zcat_cold") <= 0.6)),
  ("index peak RSS, scale", mb("s_index_rss_kb"), f'{sf} entries', "-",
   f'<= {rbud/mib:.0f} MiB (64 MiB + 300 B/entry)', met(med["s_index_rss_kb"] * 1024 <= rbud)),
  ("index peak RSS, realistic", mb("r_index_rss_kb"), f'{rf} entries', "-", "-", "-"),
  ("mount peak RSS (VmHWM) after a cold find, scale", mb("s_mount_hwm_kb"), f'cold find {s("s_find_cold")}', "-",
   f'<= {sbud/mib:.0f} MiB (16 MiB + 100 B/entry)', met(med["s_mount_hwm_kb"] * 1024 <= sbud)),
  ("mount ready, page cache warm, scale", ms("s_ready"), f'realistic image {ms("r_ready")}', "-", "<= 30 ms",
   met(med["s_ready"] <= 0.030)),
  ("whole-image index, digests verified, realistic (layers in the page cache)", s("r_index"),
   f'rapidgzip -P 2 --export-index {s("r_rgz")}', f'{x("r_index", "r_rgz"):.2f}x rapidgzip', "<= 1.0x",
   met(x("r_index", "r_rgz") <= 1.0)),
  ("whole-image index, scale", s("s_index"), f'rapidgzip -P 2 --export-index {s("s_rgz")}',
   f'{x("s_index", "s_rgz"):.2f}x rapidgzip', "-", "-"),
]
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
ncpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
head = (f'Realistic image: the bench image above ({env["BR_R_LAYERS"]} gzip layers, {int(env["BR_R_COMP"])/mib:.0f} MiB compressed, {rf} entries). '
        f'Scale image: one gzip layer of {sf} entries shaped like node_modules ({int(env["BR_S_COMP"])/mib:.0f} MiB compressed), '
        f'generated by scripts/bench-scale-image.py. Native: the merged tree of each, extracted to local disk. '
        f'Machine: {cpu}, {ncpu} cores; load average at start {env["BR_LOAD"]}. Median of {env["BR_RUNS"]} runs '
        f'(mount ready: {env["BR_READY_RUNS"]}); the whole benchmark took {float(env["BR_TOTAL"]):.0f} s.')
cols = ["measure", "clip", "baseline (same run)", "ratio", "aim", "aim met"]
table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows]
notes = [
  "- *cold*: `sync; echo 3 > /proc/sys/vm/drop_caches` right before the command, on both sides (clip: after mounting, "
  "fresh span cache). *hot*: the same command again at once, on both sides. Index rows: layers in the page cache for both "
  "contenders. Mount ready: launch of `clipctl mount --daemon` to its return, binary and archive read just before.",
  "- Peak RSS: `/usr/bin/time %M` of `clipctl index-layout`; VmHWM of the mount daemon right after its cold find.",
]
if noisiest(raw):
    notes.append(noisiest(raw))
section = ["## Read path (issue 14)", "", head, "", *table, "", *notes, ""]
print(head); print(); print("\n".join(table)); print(); print("\n".join(notes))
write_section(md_path, section)
PY

# Helpers the cold-start benchmarks share (bench-start.sh, bench-wan.sh,
# bench-spans.sh): sourced after the script sets $clipctl, $mnt (its mount point),
# $log, $samples and $stats (the mount's stats file), and defines die().

# is_mounted DIR: whether DIR is a mount point.
is_mounted() { awk -v p="$1" '$2 == p { f = 1 } END { exit !f }' /proc/mounts; }
# unmount: ends the mount at $mnt, if any, and waits for its daemon to exit.
unmount() {
  is_mounted "$mnt" || return 0
  "$clipctl" umount "$mnt" >/dev/null 2>>"$log" || fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" || true
  for _ in $(seq 100); do pgrep -f "clipctl mount .* $mnt " >/dev/null || break; sleep 0.1; done
}
# now VAR: microseconds since the epoch into VAR.
now() { printf -v "$1" '%s' "${EPOCHREALTIME/[.,]/}"; }
# sample KEY VALUE: one sample for the table.
sample() { echo "$1 $2" >> "$samples"; }
# drop: the page cache dropped (what "cold" means).
drop() { sync; echo 3 > /proc/sys/vm/drop_caches || die "cannot drop the page cache"; }
# secs T0 T1: seconds between two `now` values.
secs() { awk -v d=$(($2 - $1)) 'BEGIN { printf "%.6f", d / 1e6 }'; }
# stat_field KEY: a field of the mount's stats file (rewritten every 100 ms).
stat_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], 0))' "$stats" "$1"; }

#!/usr/bin/env bash
# Shared-tier benchmarks (issue 11), run by scripts/bench.sh after bench-registry.sh:
# the bench image in a local docker-registry, its archive made from there, and a
# shared content tier in an S3 bucket (versitygw on loopback, `--remote-cache`).
#  - first worker: a fresh span cache and an empty tier prefix; cold python start
#    from the registry (the layers it touched are then stored into the tier);
#  - second worker: a fresh span cache, the tier the first one warmed; cold python
#    start, registry bytes.
# cold = fresh span cache dir and `echo 3 > /proc/sys/vm/drop_caches` right before
# the measured command, on both sides. Median of $RUNS runs, each with its own prefix.
# (Re)writes the section "## Shared tier (issue 11)" of BENCHMARKS.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
work=$root/bench-work
clipctl=$root/target/release/clipctl
layout=$work/layout
t=$work/tier
PY_PROG='import json, ssl, sqlite3, asyncio'
die() { echo "bench-tier: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (drop_caches, chroot, FUSE)"
command -v versitygw >/dev/null || die "versitygw missing (scripts/deps.sh installs it)"
rm -rf "$t"; mkdir -p "$t/s3root" "$t/reg"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The registry.
rport=$(free_port)
cat > "$t/reg/config.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $t/reg/data
http:
  addr: 127.0.0.1:$rport
EOF
docker-registry serve "$t/reg/config.yml" > "$t/reg/log" 2>&1 &
regpid=$!
# The S3 tier.
sport=$(free_port)
export AWS_ACCESS_KEY_ID=CLIPBENCHKEY AWS_SECRET_ACCESS_KEY=clip-bench-secret-0123456789 AWS_REGION=us-east-1
versitygw --port "127.0.0.1:$sport" --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" \
  --region us-east-1 --health /health --quiet posix "$t/s3root" > "$t/versitygw.log" 2>&1 &
s3pid=$!
mnt=$t/mnt
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && { "$clipctl" umount "$mnt" 2>/dev/null || umount -l "$mnt"; }
  kill "$regpid" "$s3pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$rport/v2/" >/dev/null && break; sleep 0.1; done
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$sport/health" >/dev/null && break; sleep 0.1; done
endpoint=http://127.0.0.1:$sport
versitygw admin --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" --region us-east-1 \
  --endpoint-url "$endpoint" create-bucket --bucket fleet --owner "$AWS_ACCESS_KEY_ID" >/dev/null
host=127.0.0.1:$rport
skopeo copy -q --dest-tls-verify=false "oci:$layout:bench" "docker://$host/bench:latest"
clip=$t/bench.clip
"$clipctl" create "$host/bench:latest" --out "$clip" 2>/dev/null

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { printf -v "$1" '%s' "${EPOCHREALTIME/[.,]/}"; }
# worker NAME PREFIX: a cold python start on a fresh span cache with the tier at
# PREFIX; prints "seconds start_registry_bytes registry_bytes tier_bytes tier_stores".
worker() {
  local name=$1 prefix=$2 cache=$t/cache-$1 stats=$t/stats-$1.json t0 t1
  rm -rf "$cache" "$stats"
  "$clipctl" mount "$clip" "$mnt" --cache-dir "$cache" --daemon --stats-file "$stats" \
    --remote-cache "s3://fleet/$prefix" --endpoint "$endpoint" --path-style --log-file "$t/mount.log" --log-level info
  drop
  now t0
  chroot "$mnt" python3 -c "$PY_PROG" >/dev/null
  now t1
  local secs line start
  secs=$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.3f", d / 1e6 }')
  # What the start itself read (the daemon rewrites its stats every 100 ms; layer
  # stores begin 5 s after the reads that caused them).
  sleep 0.3
  start=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["registry_bytes"])' "$stats")
  "$clipctl" umount "$mnt"
  for _ in $(seq 200); do mountpoint -q "$mnt" || break; sleep 0.05; done
  # The daemon finishes storing layers into the tier after the unmount (the first
  # worker's are stored then, if the start was shorter than the 5 s warm delay):
  # wait for it, so the second worker finds them; it writes its last stats then.
  for _ in $(seq 1200); do pgrep -f "clipctl mount $clip $mnt" >/dev/null || break; sleep 0.1; done
  line=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["registry_bytes"], s["tier_bytes"], s["tier_stores"])' "$stats")
  echo "$secs $start $line"
}
results=$t/results.txt
: > "$results"
for r in $(seq "$RUNS"); do
  echo "first $(worker first "run$r")" >> "$results"
  echo "second $(worker second "run$r")" >> "$results"
done
PYTHONPATH="$root/scripts" python3 - "$results" "$root/BENCHMARKS.md" "$RUNS" "$clip" "$clipctl" <<'PY'
import json, statistics, subprocess, sys
results, md_path, runs, clip, clipctl = sys.argv[1:6]
rows = {"first": [], "second": []}
for line in open(results):
    who, secs, start, reg, tier, stores = line.split()
    rows[who].append((float(secs), int(start), int(reg), int(tier), int(stores)))
med = lambda who, i: statistics.median(r[i] for r in rows[who])
info = json.loads(subprocess.run([clipctl, "inspect", "--json", clip], capture_output=True, text=True, check=True).stdout)
image = sum(l["compressed_size"] for l in info["layers"])
mib = 1 << 20
f_s, s_s = med("first", 0), med("second", 0)
table = [
  "| measure | second worker (warm tier) | first worker (same run) | ratio |",
  "|---|---|---|---|",
  f"| cold python start (`{'import json, ssl, sqlite3, asyncio'}`) | {s_s:.2f} s | {f_s:.2f} s | {s_s / f_s:.2f}x |",
  f"| bytes from the registry for the start | {med('second', 1) / mib:.1f} MiB | {med('first', 1) / mib:.1f} MiB | |",
  f"| bytes from the registry, start and background stores | {med('second', 2) / mib:.1f} MiB | {med('first', 2) / mib:.1f} MiB (image {image / mib:.0f} MiB compressed: the touched layers, whole) | |",
  f"| bytes from the tier (uncompressed spans) | {med('second', 3) / mib:.1f} MiB | {med('first', 3) / mib:.1f} MiB | |",
  f"| layers stored into the tier | {med('second', 4):.0f} | {med('first', 4):.0f} | |",
]
head = (f"The bench image in docker-registry on 127.0.0.1 and a shared content tier in an S3 bucket "
        f"(versitygw on 127.0.0.1, `clipctl mount --remote-cache`). Each run: a first worker (fresh span cache, "
        f"empty tier prefix) starts python cold, the layers it touched are stored into the tier (uncompressed, under "
        f"their diff ids, in the background after 5 s), then a second worker (fresh span cache, same prefix) starts "
        f"python cold. *cold*: fresh span cache and `echo 3 > /proc/sys/vm/drop_caches` before the command. "
        f"Median of {runs} runs. On loopback the registry is as fast as the tier, so the time ratio shows the cost of "
        f"the tier's reads (no inflate: ranges of the uncompressed layer) against inflating spans; the bytes show what "
        f"a registry in another region would be spared.")
section = ["## Shared tier (issue 11)", "", head, "", *table, ""]
print(head); print(); print("\n".join(table))
from bench_md import write_section
write_section(md_path, section)
PY

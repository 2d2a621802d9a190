#!/usr/bin/env bash
# Container start from a registry (issue 15): the bench image pushed to a local
# docker-registry, started three ways, each cold, and timed from nothing on this
# machine but the (small) archive to the end of `python3 -c PROG`:
#  - pull + unpack + run: `skopeo copy` to a layout, `umoci unpack`, chroot run;
#  - lazy: `clipctl mount` of the index-only archive (empty span cache), chroot run;
#  - lazy + profile: the same with `--prefetch` of a startup profile recorded by
#    one earlier lazy start (`clipctl mount --record`).
# Twice: on loopback, and through scripts/wan-proxy.py, which adds 50 ms to every
# request and caps the bandwidth at 1 Gbit/s (a registry in another region).
# Called by scripts/bench.sh; runs alone too. Medians of $RUNS runs. Prints the
# table and (re)writes "## Start from a registry (issue 15)" of BENCHMARKS.md;
# with SPAN_SIZE (e.g. 1MiB: archives made with --span-size) its own section,
# "## Start from a registry, SPAN_SIZE spans (issue 15)".
#
# cold = `sync; echo 3 > /proc/sys/vm/drop_caches` right before the measured
#        command, on both sides.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
RUNS=${RUNS:-3}
DELAY_MS=${DELAY_MS:-50} MBIT=${MBIT:-1000}
SPAN_SIZE=${SPAN_SIZE:-}
work=$root/bench-work
clipctl=$root/target/release/clipctl
layout=$work/layout
w=$work/wan mnt=$work/wan/mnt cache=$work/wan/cache stats=$work/wan/stats.json
samples=$w/samples.txt log=$w/bench-wan.log
PY_PROG='import json, email.parser, http.client, ssl, sqlite3, decimal, asyncio'

die() { echo "bench-wan: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (drop_caches, FUSE, chroot, umoci unpack)"
[ -x "$clipctl" ] || die "$clipctl missing: build first (make build)"
"$root/scripts/bench-image.sh" "$layout"

. "$root/scripts/bench-lib.sh"
pids=()
cleanup() { unmount; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

unmount
rm -rf "$w"; mkdir -p "$w" "$mnt"
: > "$samples"; : > "$log"

# ---------------------------------------------------------------- registry, proxy
rport=$(free_port)
cat > "$w/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $w/registry
http:
  addr: 127.0.0.1:$rport
EOF
docker-registry serve "$w/registry.yml" >>"$log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$rport/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy -q --dest-tls-verify=false "oci:$layout:bench" "docker://127.0.0.1:$rport/bench:latest"
pport=$(free_port)
coproc PROXY { exec python3 "$root/scripts/wan-proxy.py" "$pport" "127.0.0.1:$rport" --delay-ms "$DELAY_MS" --mbit "$MBIT" 2>>"$log"; }
pids+=("$PROXY_PID")
read -r ready <&"${PROXY[0]}" && [ "$ready" = ready ] || die "wan-proxy did not start"
declare -A host=([loop]=127.0.0.1:$rport [wan]=127.0.0.1:$pport)
nets=(loop wan)
for n in "${nets[@]}"; do
  "$clipctl" create "127.0.0.1:$rport/bench:latest" --storage-ref "${host[$n]}/bench:latest" \
    ${SPAN_SIZE:+--span-size "$SPAN_SIZE"} \
    --out "$w/$n.clip" >/dev/null 2>>"$log" || die "clipctl create failed; see $log"
done
mapfile -t ls < <(python3 "$root/scripts/bench-layers.py" "$layout")
sample image_bytes "$(stat -c %s "${ls[@]}" | awk '{ t += $1 } END { print t }')"
sample archive_bytes "$(stat -c %s "$w/loop.clip")"

# lazy N [EXTRA...]: one cold lazy start from network N; samples under the caller's name.
lazy() {
  local n=$1; shift
  unmount; rm -rf "$cache" "$stats"
  drop
  now t0
  "$clipctl" mount "$w/$n.clip" "$mnt" --cache-dir "$cache" --daemon --stats-file "$stats" "$@" \
    >/dev/null 2>>"$log" || die "mount from $n failed; see $log"
  chroot "$mnt" python3 -c "$PY_PROG" >/dev/null 2>>"$log" || die "python3 in the $n mount failed"
  now t1
  sleep 0.3
}

# The profiles: one recorded lazy start per network.
for n in "${nets[@]}"; do
  lazy "$n" --record "$w/$n.profile.json"
  unmount
  for _ in $(seq 100); do [ -f "$w/$n.profile.json" ] && break; sleep 0.1; done
  [ -f "$w/$n.profile.json" ] || die "no profile recorded from $n"
  sample "${n}_profile_spans" "$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["spans"]))' "$w/$n.profile.json")"
done

# ---------------------------------------------------------------- cold starts
for _ in $(seq "$RUNS"); do
  for n in "${nets[@]}"; do
    rm -rf "$w/pull" "$w/bundle"
    drop
    now t0
    skopeo copy -q --src-tls-verify=false "docker://${host[$n]}/bench:latest" "oci:$w/pull:bench" >>"$log" 2>&1
    umoci unpack --image "$w/pull:bench" "$w/bundle" >/dev/null 2>>"$log"
    chroot "$w/bundle/rootfs" python3 -c "$PY_PROG" >/dev/null
    now t1
    sample "${n}_pull" "$(secs "$t0" "$t1")"
    rm -rf "$w/pull" "$w/bundle"

    lazy "$n" --no-prefetch
    sample "${n}_lazy" "$(secs "$t0" "$t1")"
    sample "${n}_lazy_compressed" "$(stat_field compressed_bytes_read)"
    lazy "$n" --prefetch "$w/$n.profile.json"
    sample "${n}_profile" "$(secs "$t0" "$t1")"
    sample "${n}_profile_compressed" "$(stat_field compressed_bytes_read)"
    sample "${n}_profile_replayed" "$(stat_field replayed)"
    unmount
  done
done
rm -rf "$cache"

# ---------------------------------------------------------------- the table
BW_SPAN=$SPAN_SIZE BW_RUNS=$RUNS BW_PROG=$PY_PROG BW_DELAY=$DELAY_MS BW_MBIT=$MBIT BW_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)" \
python3 - "$samples" "$root/BENCHMARKS.md" <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(sys.argv[2]), "scripts"))
from bench_md import read_samples, write_section, noisiest
raw, med = read_samples(sys.argv[1])
env = os.environ
names = {"loop": "loopback registry",
         "wan": f"through a proxy adding {env['BW_DELAY']} ms per request, {float(env['BW_MBIT'])/1000:g} Gbit/s"}
img = med["image_bytes"]
rows = []
for n in ("loop", "wan"):
    p, l, f = med[f"{n}_pull"], med[f"{n}_lazy"], med[f"{n}_profile"]
    rows.append(f"| {names[n]} | {p:.2f} s | {l:.2f} s ({p / l:.1f}x faster) "
                f"| {f:.2f} s ({p / f:.1f}x faster than pull; {l / f:.2f}x faster than lazy) "
                f"| {med[f'{n}_lazy_compressed'] / 1e6:.1f} MB / {med[f'{n}_profile_compressed'] / 1e6:.1f} MB "
                f"| {med[f'{n}_profile_spans']:.0f} spans, {med[f'{n}_profile_replayed']:.0f} replayed |")
title = "## Start from a registry (issue 15)"
if env.get("BW_SPAN"):
    title = f"## Start from a registry, {env['BW_SPAN']} spans (issue 15)"
sec = [title, "",
       f"Cold `python3 -c '{env['BW_PROG']}'` in the bench image ({img / 1e6:.1f} MB compressed), "
       "the image in a docker-registry on 127.0.0.1, timed from nothing local but the index-only "
       f"archive ({med['archive_bytes'] / 1e6:.2f} MB) to python's exit. *Pull + unpack + run*: "
       "`skopeo copy` to a layout, `umoci unpack`, `chroot` run. *Lazy*: `clipctl mount` (empty span "
       "cache, `--no-prefetch`) and the same run in it. *Lazy + profile*: `--prefetch` of a startup "
       "profile recorded by an earlier lazy start (`clipctl mount --record`): its spans are fetched "
       "8 at a time from the moment of mounting. Cold: page cache dropped right before each "
       f"start. Median of {env['BW_RUNS']} runs; load average at start {env['BW_LOAD']}.", "",
       "| registry | pull + unpack + run | lazy | lazy + profile | compressed bytes fetched, lazy / with profile | profile |",
       "|---|---|---|---|---|---|"] + rows + ["",
       "- Aims (issue 15): lazy >= 20x faster than pull + unpack + run on loopback; through the "
       "proxy, the profile makes the lazy start >= 2x faster and lazy + profile >= 5x faster than "
       "pull + unpack + run."]
nz = noisiest(raw, skip=("_bytes", "_compressed", "_spans", "_replayed"))
if nz:
    sec.append(nz)
write_section(sys.argv[2], sec)
print("\n".join(sec))
PY

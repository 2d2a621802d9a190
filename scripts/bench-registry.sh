#!/usr/bin/env bash
# Registry benchmarks (issue 5), run by scripts/bench.sh after the mount benchmarks:
# the bench image pushed to a local docker-registry on 127.0.0.1, then
#  - bytes a cold read of one small file in the >100 MiB layer transfers, against
#    the whole layer a full pull transfers;
#  - `clipctl create` from the registry against `index-layout` of the same image on
#    disk and against `skopeo copy` of the image to a local layout alone.
# (Re)writes the section "## Registry (issue 5)" of BENCHMARKS.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
work=$root/bench-work
clipctl=$root/target/release/clipctl
layout=$work/layout
reg=$work/registry
rm -rf "$reg"; mkdir -p "$reg"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$reg/config.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $reg/data
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$reg/config.yml" > "$reg/log" 2>&1 &
regpid=$!
trap 'kill $regpid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
host=127.0.0.1:$port
skopeo copy -q --dest-tls-verify=false "oci:$layout:bench" "docker://$host/bench:latest"

median() { sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"; }
# time_runs CMD...: median wall seconds over $RUNS runs (blobs in the page cache:
# the registry's, or the layout's, whichever the command reads).
time_runs() {
  for _ in $(seq "$RUNS"); do
    rm -rf "$reg/copy"
    /usr/bin/time -o "$reg/time.out" -f "%e" "$@" >/dev/null 2>&1
    tail -1 "$reg/time.out"
  done | median
}
cat "$layout"/blobs/sha256/* > /dev/null
find "$reg/data" -type f -exec cat {} + > /dev/null
t_create=$(time_runs "$clipctl" create "$host/bench:latest" --out "$reg/r.clip")
t_index=$(time_runs "$clipctl" index-layout --layout "$layout" --tag bench --out "$reg/l.clip")
t_skopeo=$(time_runs skopeo copy -q --src-tls-verify=false "docker://$host/bench:latest" "oci:$reg/copy:bench")
"$clipctl" create "$host/bench:latest" --out "$reg/r.clip" 2>/dev/null

# A small file in the largest layer, read cold (no span cache involved: `cat`).
file=/usr/lib/python3.11/os.py
"$clipctl" cat "$reg/r.clip" "$file" --stats 2>"$reg/cat.stats" >/dev/null
PYTHONPATH="$root/scripts" python3 - "$reg" "$root/BENCHMARKS.md" "$file" <<PY
import json, subprocess, sys
reg, md_path, path = sys.argv[1:4]
RUNS = $RUNS
st = json.loads(open(f"{reg}/cat.stats").read().strip().splitlines()[-1])
info = json.loads(subprocess.run(["$clipctl", "inspect", "--json", f"{reg}/r.clip"], capture_output=True, text=True, check=True).stdout)
biggest = max(info["layers"], key=lambda l: l["compressed_size"])
size = len(subprocess.run(["$clipctl", "cat", f"{reg}/r.clip", path, "--layout", "$layout"], capture_output=True, check=True).stdout)
mib = 1 << 20
t_create, t_index, t_skopeo = $t_create, $t_index, $t_skopeo
rows = [
  (f"cold read of {path} ({size} bytes), bytes received from the registry",
   f'{st["registry_bytes"]/1024:.0f} KiB in {st["registry_requests"]} request(s)',
   f'compressed range of the span read: {st["compressed_bytes_read"]/1024:.0f} KiB; full pull of its layer: {biggest["compressed_size"]/mib:.1f} MiB '
   f'({100*st["registry_bytes"]/biggest["compressed_size"]:.2f}% of it)',
   "<= one span's compressed size + headers",
   "yes" if st["registry_bytes"] <= st["compressed_bytes_read"] and st["registry_requests"] <= 1 else "no"),
  ("clipctl create from the registry (stream + index, layers in parallel)", f"{t_create:.2f} s",
   f"{t_index:.2f} s index-layout on disk: {t_create/t_index:.2f}x", "<= 1.2x", "yes" if t_create <= 1.2 * t_index else "no"),
  ("skopeo copy of the image to a local layout (pull only, no index)", f"{t_skopeo:.2f} s",
   f"clip create is {t_create/t_skopeo:.2f}x of it", "", ""),
]
head = (f"The bench image pushed to docker-registry on 127.0.0.1 (plain HTTP, loopback, blobs in the page cache); "
        f"median of {RUNS} runs. Bytes are response body bytes counted in clip's client; each request adds a few hundred bytes of headers.")
cols = ["measure", "clip", "baseline (same run)", "aim", "aim met"]
table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows]
section = ["## Registry (issue 5)", "", head, "", *table, ""]
print(head); print(); print("\n".join(table))
from bench_md import write_section
write_section(md_path, section)
PY

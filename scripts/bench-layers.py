#!/usr/bin/env python3
"""Prints the layer blob paths of the image tagged `bench` in the OCI layout argv[1],
bottom first (shared by scripts/bench.sh and scripts/bench-mount.sh)."""
import json
import sys

root = sys.argv[1]
idx = json.load(open(f"{root}/index.json"))
m = next(m for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "bench")
man = json.load(open(f"{root}/blobs/sha256/" + m["digest"].split(":")[1]))
for layer in man["layers"]:
    print(f"{root}/blobs/sha256/" + layer["digest"].split(":")[1])

#!/usr/bin/env python3
"""Prints the layer blob paths of the image tagged argv[2] (default `bench`) in the OCI
layout argv[1], bottom first (shared by the bench scripts)."""
import json
import sys

root = sys.argv[1]
tag = sys.argv[2] if len(sys.argv) > 2 else "bench"
idx = json.load(open(f"{root}/index.json"))
m = next(m for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
man = json.load(open(f"{root}/blobs/sha256/" + m["digest"].split(":")[1]))
for layer in man["layers"]:
    print(f"{root}/blobs/sha256/" + layer["digest"].split(":")[1])

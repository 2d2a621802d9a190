#!/usr/bin/env python3
"""Writes an image into an OCI layout for the C tests: one gzip layer per directory
(its contents at the image root, tarred by GNU tar), an image config with the
runtime fields given, and an index.json entry tagged TAG (added to an existing
layout). Tools like umoci 0.4.7 `insert` write layers without tar padding, which
clip rightly rejects; GNU tar does not.

usage: make_layout.py LAYOUT TAG CONFIG_JSON DIR [DIR...]
CONFIG_JSON: the "config" object of the image config, e.g. {"Env": ["A=b"]}."""
import hashlib, json, os, platform, subprocess, sys, tempfile

def put_blob(layout, data_path=None, data=None):
    h = hashlib.sha256()
    if data is None:
        with open(data_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        size = os.path.getsize(data_path)
    else:
        h.update(data)
        size = len(data)
    dst = os.path.join(layout, "blobs", "sha256", h.hexdigest())
    if data is None:
        os.replace(data_path, dst)
    else:
        with open(dst, "wb") as f:
            f.write(data)
    return "sha256:" + h.hexdigest(), size

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()

def main():
    layout, tag, config_json, dirs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    layers, diff_ids = [], []
    for d in dirs:
        with tempfile.TemporaryDirectory(dir=layout) as tmp:
            tar_path, gz_path = os.path.join(tmp, "layer.tar"), os.path.join(tmp, "layer.tar.gz")
            subprocess.run(["tar", "-C", d, "--sort=name", "--owner=0", "--group=0", "--numeric-owner",
                            "--mtime=@1700000000", "-cf", tar_path, "."], check=True)
            diff_ids.append(sha256_file(tar_path))
            with open(gz_path, "wb") as out:
                subprocess.run(["gzip", "-n", "-1", "-c", tar_path], stdout=out, check=True)
            digest, size = put_blob(layout, data_path=gz_path)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": digest, "size": size})
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = {"architecture": arch, "os": "linux", "config": json.loads(config_json),
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cdigest, csize = put_blob(layout, data=json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": cdigest, "size": csize},
                "layers": layers}
    mdigest, msize = put_blob(layout, data=json.dumps(manifest).encode())
    index_path = os.path.join(layout, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
    index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "digest": mdigest, "size": msize,
                               "annotations": {"org.opencontainers.image.ref.name": tag}})
    with open(index_path, "w") as f:
        json.dump(index, f)

main()

#!/usr/bin/env python3
"""Builds the scale benchmark image (issue 14) into OUT, an OCI layout with tag
"scale": one gzip layer of about 166,000 entries shaped like a node_modules tree
(packages with package.json, README.md, LICENSE, index.js, lib/ and test/ trees of
small JavaScript files, nested node_modules, .bin symlinks to scripts).

Deterministic (seeded), so every run measures the same image; written once (OUT/.done
marks it done). Usage: bench-scale-image.py OUT [ENTRIES]
"""

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tarfile

WORDS = (
    "function return const let var if else for while module exports require this new "
    "null undefined true false typeof instanceof async await promise resolve reject "
    "callback options value key length push map filter reduce object array string "
    "number buffer stream error message default prototype call apply bind arguments"
).split()


def text(rng, size):
    """About `size` bytes of JavaScript-looking text (compresses about 4:1, like
    real source)."""
    out, n = [], 0
    while n < size:
        line = "  " * rng.randrange(4) + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 12)))
        line += rng.choice([";", " {", " }", ",", ""]) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out)[:size].encode()


def file_size(rng):
    # Log-normal around 1.5 KiB with a long tail (a few files of hundreds of KiB).
    return min(int(rng.lognormvariate(7.3, 1.4)), 2 << 20)


class Writer:
    def __init__(self, tar, rng):
        self.tar, self.rng, self.entries = tar, rng, 0

    def add(self, path, kind, data=b"", target=""):
        ti = tarfile.TarInfo(path)
        ti.mtime = 1700000000 + self.rng.randrange(10**7)
        ti.uid = ti.gid = 1000
        ti.uname = ti.gname = "node"
        if kind == "dir":
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            self.tar.addfile(ti)
        elif kind == "link":
            ti.type, ti.mode, ti.linkname = tarfile.SYMTYPE, 0o777, target
            self.tar.addfile(ti)
        else:
            ti.mode = 0o755 if kind == "exe" else 0o644
            ti.size = len(data)
            self.tar.addfile(ti, io.BytesIO(data))
        self.entries += 1


def package(w, base, name, depth, budget):
    rng = w.rng
    w.add(base, "dir")
    meta = {"name": name, "version": f"{rng.randrange(10)}.{rng.randrange(30)}.{rng.randrange(20)}",
            "main": "index.js", "license": "MIT", "description": text(rng, 60).decode()}
    w.add(f"{base}/package.json", "file", json.dumps(meta, indent=2).encode())
    w.add(f"{base}/README.md", "file", text(rng, file_size(rng)))
    w.add(f"{base}/LICENSE", "file", text(rng, 1070))
    w.add(f"{base}/index.js", "file", text(rng, file_size(rng)))
    scripts = []
    for sub in ("lib", "test", "dist")[: 1 + rng.randrange(3)]:
        w.add(f"{base}/{sub}", "dir")
        for d in range(rng.randrange(1, 4)):
            dpath = f"{base}/{sub}/{rng.choice(WORDS)}{d}"
            w.add(dpath, "dir")
            for f in range(rng.randrange(2, budget)):
                p = f"{dpath}/{rng.choice(WORDS)}-{f}.js"
                exe = rng.random() < 0.02
                w.add(p, "exe" if exe else "file", text(rng, file_size(rng)))
                if exe:
                    scripts.append(p)
    if depth < 2 and rng.random() < 0.15:
        w.add(f"{base}/node_modules", "dir")
        for k in range(rng.randrange(1, 4)):
            package(w, f"{base}/node_modules/{name}-dep{k}", f"{name}-dep{k}", depth + 1, budget)
    return scripts


def main():
    out = sys.argv[1]
    want = int(sys.argv[2]) if len(sys.argv) > 2 else 166_000
    if os.path.exists(os.path.join(out, ".done")):
        return
    shutil.rmtree(out, ignore_errors=True)
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs)
    rng = random.Random(166)
    tmp = os.path.join(out, "layer.tmp")
    diff = hashlib.sha256()

    class Tee(io.RawIOBase):
        """The uncompressed stream: hashed (diff_id) and compressed."""

        def __init__(self, gz):
            self.gz = gz

        def writable(self):
            return True

        def write(self, b):
            diff.update(b)
            self.gz.write(b)
            return len(b)

    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
        with tarfile.open(fileobj=Tee(gz), mode="w|", format=tarfile.GNU_FORMAT) as tar:
            w = Writer(tar, rng)
            w.add("app", "dir")
            w.add("app/node_modules", "dir")
            w.add("app/node_modules/.bin", "dir")
            n = 0
            while w.entries < want:
                name = f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{n}"
                for s in package(w, f"app/node_modules/{name}", name, 0, 12)[:1]:
                    rel = os.path.relpath(s, "app/node_modules/.bin")
                    w.add(f"app/node_modules/.bin/{name}", "link", target=rel)
                n += 1
    digest = hashlib.sha256(open(tmp, "rb").read()).hexdigest()
    size = os.path.getsize(tmp)
    os.rename(tmp, os.path.join(blobs, digest))

    def blob(obj):
        data = json.dumps(obj, separators=(",", ":")).encode()
        d = hashlib.sha256(data).hexdigest()
        open(os.path.join(blobs, d), "wb").write(data)
        return d, len(data)

    cfg_d, cfg_n = blob({
        "architecture": "amd64", "os": "linux",
        "config": {"WorkingDir": "/app", "Cmd": ["node"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff.hexdigest()]},
    })
    man_d, man_n = blob({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cfg_d, "size": cfg_n},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + digest, "size": size}],
    })
    json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(out, "oci-layout"), "w"))
    json.dump({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + man_d, "size": man_n,
        "annotations": {"org.opencontainers.image.ref.name": "scale"}}]},
        open(os.path.join(out, "index.json"), "w"))
    open(os.path.join(out, ".done"), "w").write(f"{w.entries}\n")
    print(f"bench: scale image: {w.entries} entries, {size / 2**20:.1f} MiB compressed", file=sys.stderr)


if __name__ == "__main__":
    main()

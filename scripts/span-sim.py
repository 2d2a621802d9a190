#!/usr/bin/env python3
"""Estimates checkpoint placements that are not built, for scripts/bench-spans.sh.

    span-sim.py ARCHIVE_256KIB PROFILE

ARCHIVE is an index-only archive made with --span-size 256KiB (every span its own
checkpoint, so its span starts are the candidate checkpoints of a coarser
placement), PROFILE the startup profile a start recorded on it (the 256 KiB spans
the start read). For each placement (a subset of the candidates), a read costs the
compressed bytes from the checkpoint of every span it touches to the next kept
checkpoint, as a mount's does; the archive costs the 256 KiB archive's tables, less
44 bytes per span dropped, plus the stored windows of the checkpoints kept. With
"windows compressed together", the kept windows are decompressed, concatenated and
compressed again as 1 MiB zstd frames (zstd -19), which a reader could still fetch
frame by frame. Prints one JSON object per placement: name, archive, fetched.
"""

import json
import struct
import subprocess
import sys


def zstd_d(data):
    return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout


def zstd_c(data):
    return subprocess.run(["zstd", "-19", "-c"], input=data, capture_output=True, check=True).stdout


def sections(b):
    count = struct.unpack_from("<I", b, 16)[0]
    toff = struct.unpack_from("<Q", b, 24)[0]
    out = {}
    for i in range(count):
        sid, fl, off, sl, _ = struct.unpack_from("<IIQQQ", b, toff + 48 * i)
        raw = b[off:off + sl]
        out[sid] = (zstd_d(raw) if fl & 2 else raw, sl)
    return out


def main():
    archive, profile = sys.argv[1:3]
    b = open(archive, "rb").read()
    sec = sections(b)
    layers = json.loads(sec[2][0])
    cps, spans, windows, inodes = sec[3][0], sec[4][0], sec[5][0], sec[6][0]
    prof = json.load(open(profile))
    # Per layer: candidates (span starts), their compressed offsets and windows.
    lay = []
    for li, l in enumerate(layers):
        c0, _ = l["checkpoints"]
        s0, sn = l["spans"]
        cand = []
        for k in range(sn):
            out_off, cp = struct.unpack_from("<QI", spans, (s0 + k) * 44)
            in_off, cp_out, _, kind, _, wlen, woff = struct.unpack_from("<QQBBHIQ", cps, (c0 + cp) * 32)
            cand.append({"out": out_off, "in": in_off, "own": cp_out == out_off,
                         "wlen": wlen, "woff": woff})
        lay.append({"digest": l["digest"], "size": l["compressed_size"],
                    "usize": l["uncompressed_size"], "cand": cand, "starts": [0] * sn,
                    "need": [False] * sn})
    # File starts per candidate span (small files make a span dense).
    for i in range(len(inodes) // 64):
        mode, = struct.unpack_from("<I", inodes, i * 64)
        if mode & 0o170000 != 0o100000:
            continue
        size, a, li = struct.unpack_from("<QQI", inodes, i * 64 + 40)
        if size == 0:
            continue
        c = lay[li]["cand"]
        lo, hi = 0, len(c) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if c[mid]["out"] <= a:
                lo = mid
            else:
                hi = mid - 1
        lay[li]["starts"][lo] += 1
    by_digest = {l["digest"]: l for l in lay}
    for e in prof["spans"]:
        l = by_digest.get(e["layer"])
        if not l:
            continue
        for k, c in enumerate(l["cand"]):
            end = l["cand"][k + 1]["out"] if k + 1 < len(l["cand"]) else l["usize"]
            if c["out"] < e["offset"] + e["length"] and end > e["offset"]:
                l["need"][k] = True
    n_spans = sum(len(l["cand"]) for l in lay)
    base = len(b) - sec[5][1] - 44 * n_spans

    def evaluate(name, keep, joint=False):
        fetched, kept, wbytes = 0, 0, []
        for l, kk in zip(lay, keep):
            c = l["cand"]
            idx = [k for k in range(len(c)) if k == 0 or kk[k]]
            kept += len(idx)
            for j, k in enumerate(idx):
                nxt = idx[j + 1] if j + 1 < len(idx) else len(c)
                end_in = c[nxt]["in"] if nxt < len(c) else l["size"]
                if any(l["need"][k:nxt]):
                    fetched += end_in - c[k]["in"]
                if c[k]["wlen"]:
                    wbytes.append(windows[c[k]["woff"]:c[k]["woff"] + c[k]["wlen"]])
        if joint:
            raw = b"".join(zstd_d(w) for w in wbytes)
            wsize = sum(len(zstd_c(raw[i:i + (1 << 20)])) for i in range(0, len(raw), 1 << 20))
        else:
            wsize = sum(len(w) for w in wbytes)
        print(json.dumps({"name": name, "archive": base + 44 * kept + wsize, "fetched": fetched,
                          "checkpoints": kept}), flush=True)

    every = lambda n: [[k % n == 0 for k in range(len(l["cand"]))] for l in lay]
    evaluate("uniform 2 MiB", every(8))
    evaluate("uniform 1 MiB", every(4))
    evaluate("uniform 512 KiB", every(2))
    evaluate("uniform 256 KiB", every(1))
    evaluate("uniform 1 MiB, windows compressed together", every(4), joint=True)
    evaluate("uniform 2 MiB, windows compressed together", every(8), joint=True)
    evaluate("uniform 512 KiB, windows compressed together", every(2), joint=True)
    for t in (4, 8, 16):
        # 256 KiB spans where at least t files start in one, else 2 MiB.
        keep = []
        for l in lay:
            dense = [n >= t for n in l["starts"]]
            keep.append([dense[k] or (k > 0 and dense[k - 1]) or k % 8 == 0
                         for k in range(len(l["cand"]))])
        evaluate(f"256 KiB where >= {t} files start per 256 KiB, else 2 MiB", keep)
        evaluate(f"256 KiB where >= {t} files start per 256 KiB, else 2 MiB, windows compressed together",
                 keep, joint=True)


if __name__ == "__main__":
    main()

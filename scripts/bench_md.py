"""BENCHMARKS.md sections for the bench scripts: each script (re)writes its own."""


def write_section(md_path, section):
    """Replaces the section whose heading is section[0] ("## Title") in md_path with
    the lines `section`, or appends it; the file is created if missing."""
    heading = section[0]
    try:
        old = open(md_path).read()
    except FileNotFoundError:
        old = "# Benchmarks\n\n"
    before, _, after = old.partition("\n" + heading)
    rest = ""
    if after:
        nxt = after.find("\n## ")
        rest = after[nxt:] if nxt >= 0 else ""
    # One blank line before the next section (`rest` starts with its "\n## ").
    body = "\n".join(section).rstrip("\n") + "\n"
    open(md_path, "w").write(before.rstrip("\n") + "\n\n" + body + rest)


def read_samples(path):
    """The samples file of a bench script ("KEY VALUE" lines): (all values by key,
    their medians by key)."""
    import statistics
    raw = {}
    for line in open(path):
        k, v = line.split()
        raw.setdefault(k, []).append(float(v))
    return raw, {k: statistics.median(v) for k, v in raw.items()}


def noisiest(raw, skip=("_kb",), over=1.3):
    """A note naming the timed keys whose max/min over the runs exceeds `over`
    (keys ending in one of `skip` are not times), or None."""
    spread = sorted(((max(v) / min(v), k) for k, v in raw.items()
                     if len(v) > 1 and min(v) > 0 and not k.endswith(tuple(skip))), reverse=True)
    noisy = [f"{k} {min(raw[k]):.3g}-{max(raw[k]):.3g} s" for q, k in spread if q > over]
    if not noisy:
        return None
    return f"- Noisiest this run (max/min over the runs > {over}): " + "; ".join(noisy) + "."

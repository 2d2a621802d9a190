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
    open(md_path, "w").write(before.rstrip("\n") + "\n\n" + "\n".join(section) + rest)

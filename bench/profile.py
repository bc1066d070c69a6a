"""Summarise py-spy's raw output (collapsed stacks: `frame;frame;... count` per line)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def hottest(path: Path, top: int = 12) -> dict[str, list[tuple[str, float]]]:
    """The functions with most samples: `self` (on top of the stack) and `total` (anywhere in
    it, for tether's own functions), as percentages of all samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            if "(tether/" in frame:
                inclusive[frame] += n

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / samples, 1)) for f, n in counter.most_common(top)]

    return {"samples": [("all", float(samples))], "self": share(own), "total": share(inclusive)}


def report(path: Path, top: int = 12) -> list[str]:
    hot = hottest(path, top)
    lines = [f"  py-spy ({path}, {hot['samples'][0][1]:.0f} samples): hottest, self time"]
    lines += [f"    {pct:5.1f}%  {frame}" for frame, pct in hot["self"]]
    lines.append("  tether functions, inclusive time")
    lines += [f"    {pct:5.1f}%  {frame}" for frame, pct in hot["total"]]
    return lines

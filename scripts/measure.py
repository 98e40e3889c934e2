"""Wall time and peak memory of a command, counting every process it starts (Ray workers too).

Usage: python scripts/measure.py OUT.json -- COMMAND ...
Peak memory is the largest sum of resident set sizes over the command's process tree,
sampled every 0.5 s (so short spikes can be missed); USS would be lower, RSS double-counts
shared pages, so read it as an upper-side estimate.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import psutil


def tree_rss(root: psutil.Process) -> int:
    """Bytes resident over ``root`` and every process below it (0 once it is gone)."""
    try:
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list[str], **popen: Any) -> tuple[int, float, int]:
    """Run ``cmd``: its exit code, wall seconds and peak process-tree RSS in bytes (sampled every 0.5 s)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, **popen)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(root))
        time.sleep(0.5)
    return proc.returncode, time.perf_counter() - started, peak


def main() -> int:
    out, sep, *cmd = sys.argv[1:]
    if sep != "--" or not cmd:
        raise SystemExit(__doc__)
    code, wall, peak = run_measured(cmd)
    result = {
        "command": " ".join(cmd),
        "exit_code": code,
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak / 2**30, 2),
    }
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result))
    return code


if __name__ == "__main__":
    raise SystemExit(main())

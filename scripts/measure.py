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

import psutil


def main() -> int:
    out, sep, *cmd = sys.argv[1:]
    if sep != "--" or not cmd:
        raise SystemExit(__doc__)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
        except psutil.Error:
            pass
        time.sleep(0.5)
    result = {
        "command": " ".join(cmd),
        "exit_code": proc.returncode,
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_gib": round(peak / 2**30, 2),
    }
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result))
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())

"""Add ``kid_heldout`` to finished runs measured before it existed, without redoing their audit.

For each run folder: the final global model (``views/global.safetensors``) generates the same samples
its run's KID used (the same member captions, seed and sampler), and their KID is measured again
against those member images and against as many held-out non-members. The member KID must come out
as the run recorded it (checked: it proves the samples are the same); the held-out KID is then merged
into ``summary.json``'s ``quality`` with ``kid_heldout_from`` naming this script.

  .venv/bin/python scripts/heldout_kid.py runs/smp-search/lora-s100 runs/smp-search/smp-l1-s100 ...
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedlora.config import load_config  # noqa: E402
from fedlora.data import load_dataset  # noqa: E402
from fedlora.evaluation.quality import kid_fid_metrics, sampling_kwargs  # noqa: E402
from fedlora.outputs import CONFIG_FILE, GLOBAL_VIEW, SPLITS_FILE, SUMMARY_FILE, RunOutputs  # noqa: E402
from fedlora.run_files import read_splits, read_view  # noqa: E402
from fedlora.runtime import get_runtime  # noqa: E402

SAME_KID_TOLERANCE = 1e-6


def add_heldout_kid(run: Path) -> dict[str, float]:
    cfg = load_config(run / CONFIG_FILE)
    if not cfg.evaluation.kid_fid:
        raise SystemExit(f"{run}: evaluation.kid_fid is false there, so it has no KID to match")
    summary_path = run / SUMMARY_FILE
    summary = json.loads(summary_path.read_text())
    recorded = summary["quality"]["kid"]
    view = read_view(RunOutputs(run).view_path(GLOBAL_VIEW))
    kwargs = sampling_kwargs(cfg)
    runtime = get_runtime(cfg)
    got = kid_fid_metrics(cfg, runtime, read_splits(run / SPLITS_FILE), view, load_dataset(cfg.data), kwargs)
    if not math.isclose(got["kid"], recorded, rel_tol=0, abs_tol=SAME_KID_TOLERANCE):
        raise SystemExit(f"{run}: KID against members came out {got['kid']:.6f}, the run recorded {recorded:.6f}")
    summary["quality"].update(
        kid_heldout=got["kid_heldout"],
        kid_heldout_std=got["kid_heldout_std"],
        kid_heldout_from="scripts/heldout_kid.py (the run's own samples, re-generated)",
    )
    RunOutputs(run).write_json(SUMMARY_FILE, summary)  # the one writer, so the file round-trips exactly
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    for run in args.runs:
        got = add_heldout_kid(run)
        print(f"{run}: KID vs members {got['kid']:.4f} (as recorded), vs held-out non-members {got['kid_heldout']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

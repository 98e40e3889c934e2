"""What every results script shares: run a ``fedlora run`` (or reuse a finished one), archive
its numbers to docs/measurements/, and rewrite its own marked section of docs/results.md.

runs/ is not versioned, so each finished run's summary.json, metrics.jsonl and config.toml are
copied to ``docs/measurements/<table>/<run>/`` (config paths made repo-relative).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs/results.md"
MEASUREMENTS = ROOT / "docs/measurements"
ARCHIVED = ("summary.json", "metrics.jsonl", "config.toml")
# The proxy attacker's settings that SMP-LoRA tables recorded before the profile proxy became the default: the
# tables name them, so that they still reproduce (their lr, and lambda, each table sets itself). MLP_PROXY: the
# paper's MLP [512, 256] with dropout 0.5, its reward not capped, its ascent unbounded, no base anchor.
MLP_PROXY = [
    "privacy.attacker_hidden=[512, 256]",
    "privacy.attacker_dropout=0.5",
    "privacy.cap_gain_at_chance=false",
    "privacy.max_ascent=0.0",
    "privacy.base_anchor=0.0",
]
# ... and the paper's inputs and pace: one step of 4 + 4 on single-draw error maps
PAPER_PROXY = [
    "privacy.attacker_steps=1",
    "privacy.attacker_batch_size=4",
    "privacy.attacker_features='error'",
    "privacy.attacker_feature_draws=1",
    *MLP_PROXY,
]


def repo_relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def fedlora_run(config: str, overrides: list[str], out: Path, *, fresh: bool = False, quiet: bool = False) -> Path:
    """``fedlora run config`` into the folder ``out`` (its parent is run.output_dir, its name run.name).

    A finished run (summary.json present) is reused unless ``fresh``; an unfinished one is started
    over. Runs on a private local Ray instance unless RAY_ADDRESS says otherwise.
    """
    if (out / "summary.json").exists() and not fresh:
        print(f"[sweep] reuse {repo_relative(out)}", flush=True)
        return out
    if out.exists():
        shutil.rmtree(out)
    sets = [*overrides, f"run.name='{out.name}'", f"run.output_dir='{repo_relative(out.parent)}'"]
    cmd = [str(ROOT / ".venv/bin/fedlora"), "run", config, *sum((["--set", s] for s in sets), [])]
    print("[sweep] " + " ".join(cmd), flush=True)
    env = dict(
        os.environ, RAY_ADDRESS=os.environ.get("RAY_ADDRESS", "local"), FLWR_TELEMETRY_ENABLED="0", HF_HUB_OFFLINE="1"
    )
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=quiet, text=True)
    if proc.returncode != 0:
        if quiet:
            sys.stderr.write((proc.stdout or "")[-4000:] + (proc.stderr or "")[-8000:])
        raise RuntimeError(f"{repo_relative(out)}: fedlora run failed with exit code {proc.returncode}")
    print(f"[sweep] {out.name} took {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def mean_std(values: Iterable[float], scale: float = 1.0, digits: int = 3, empty: str = "n/a") -> str:
    """A table cell: "mean ± sample std" over seeds (or clients), the value alone for one, ``empty`` for none."""
    import numpy as np

    v = np.asarray(list(values), dtype=float) * scale
    if len(v) == 0:
        return empty
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def base_quality(config: str, overrides: list[str], table: str, name: str) -> dict[str, Any]:
    """KID / held-out KID of the base model itself (no adapter) on a run's config and seed: the same member
    captions, sampler and reference images as that run's own KID. Kept in docs/measurements/<table>/<name>.json
    and read from there once measured."""
    path = MEASUREMENTS / table / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    sys.path.insert(0, str(ROOT))
    from fedlora.config import load_config
    from fedlora.data import load_dataset
    from fedlora.evaluation.quality import kid_fid_metrics, sampling_kwargs
    from fedlora.models.lora import ModelView
    from fedlora.runtime import get_runtime, get_splits

    cfg = load_config(ROOT / config, overrides)
    got = kid_fid_metrics(
        cfg, get_runtime(cfg), get_splits(cfg), ModelView(), load_dataset(cfg.data), sampling_kwargs(cfg)
    )
    out = {"kid": got["kid"], "kid_heldout": got["kid_heldout"], "config": config, "overrides": overrides}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def read_summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def read_metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def archive(runs: Iterable[Path], table: str) -> None:
    """Copy each finished run's numbers to docs/measurements/<table>/<run>/, without machine paths."""
    for run in runs:
        if not (run / "summary.json").exists() or run.resolve().parent == (MEASUREMENTS / table).resolve():
            continue  # unfinished, or a table rebuilt from the archive itself
        dst = MEASUREMENTS / table / run.name
        dst.mkdir(parents=True, exist_ok=True)
        for name in ARCHIVED:
            if (run / name).exists():
                text = (run / name).read_text()
                if name == "config.toml":
                    text = text.replace(f'"{run.parent.resolve()}"', f'"{repo_relative(run.parent)}"')
                (dst / name).write_text(text)


def write_section(name: str, lines: list[str], path: Path = RESULTS) -> None:
    """Replace the block between ``<!-- name:start -->`` and ``<!-- name:end -->`` (or append it)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    block = "\n".join([start, *lines, end]) + "\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block
    path.write_text(text)
    print(f"[sweep] wrote section {name!r} of {repo_relative(path)}", file=sys.stderr)


def best_attack(attacks: dict) -> tuple[str, dict]:
    """The attack whose AUC is farthest from 0.5, with its numbers."""
    name = max(attacks, key=lambda a: abs(attacks[a]["auc"] - 0.5))
    return name, attacks[name]


def kib(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1024:.1f}"

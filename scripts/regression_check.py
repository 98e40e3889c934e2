"""Record, then check, that a change leaves a run's numbers where they were.

Each case is a real ``fedlora run`` (smoke or default config plus overrides). What is compared:
summary.json's ``privacy`` (attack metrics and details), ``quality`` and ``communication``, and
every row of metrics.jsonl without its timing keys. Timing is machine noise and is never
compared.

  python scripts/regression_check.py record            # write docs/measurements/regression/<case>.json
  python scripts/regression_check.py check             # rerun and compare against those files
  python scripts/regression_check.py check --cases smoke smoke-ffa
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from sweep import PAPER_PROXY, ROOT, fedlora_run, read_metrics

RECORDS = ROOT / "docs/measurements/regression"
RUNS = "runs/regression"
SMOKE, MILD = "configs/smoke.toml", "configs/mild.toml"
# the MP-/SMP-LoRA cases were recorded with the proxy's former defaults (lr 1e-5, 1 step of 4 + 4, error maps)
OLD_PROXY = ["privacy.attacker_learning_rate=1e-5", *PAPER_PROXY]
ALL_ATTACKS = "['learned-mlp-paper','learned-mlp','loss-threshold','pia','secmi','score-norm','gradient-norm']"

# name -> (config, overrides). Together they touch every rule, objective, DP mode and attack.
CASES: dict[str, tuple[str, list[str]]] = {
    "smoke": (SMOKE, []),
    "smoke-all-attacks": (
        SMOKE,
        [
            f"evaluation.attacks={ALL_ATTACKS}",
            "evaluation.pia_timesteps=[50, 100]",
            "evaluation.score_norm_timesteps=[10, 50]",
            "evaluation.gradient_norm_timesteps=[100, 500]",
        ],
    ),
    "smoke-kid-fid": (SMOKE, ["evaluation.kid_fid=true", "evaluation.kid_fid_samples=8"]),
    "smoke-ffa": (SMOKE, ["federation.aggregation='ffa'", "federation.rounds=2"]),
    "smoke-flora-ranks": (
        SMOKE,
        ["federation.aggregation='flora'", "federation.client_ranks=[2, 4]", "federation.rounds=2"],
    ),
    "smoke-svd-ranks": (
        SMOKE,
        ["federation.aggregation='svd'", "federation.client_ranks=[2, 4]", "federation.rounds=2"],
    ),
    "smoke-fedsa": (SMOKE, ["federation.aggregation='fedsa'", "federation.rounds=2"]),
    "smoke-mp-lora": (SMOKE, [*OLD_PROXY, "train.method='mp-lora'", "privacy.mi_lambda=1.0", "federation.rounds=2"]),
    "smoke-smp-lora": (
        SMOKE,
        [
            *OLD_PROXY,
            "train.method='smp-lora'",
            "privacy.mi_lambda=1.0",
            "privacy.attacker_steps=2",
            "federation.rounds=2",
        ],
    ),
    "smoke-dp-fedavg": (SMOKE, ["privacy.dp='dp-fedavg'", "privacy.dp_max_grad_norm=0.1", "federation.rounds=2"]),
    "smoke-dp-fedavg-client": (
        SMOKE,
        [
            "privacy.dp='dp-fedavg'",
            "privacy.dp_clipping='client'",
            "privacy.dp_max_grad_norm=0.1",
            "federation.rounds=2",
        ],
    ),
    "smoke-dp-lora": (SMOKE, ["privacy.dp='dp-lora'", "federation.rounds=2"]),
    "smoke-implicit-dp": (
        SMOKE,
        [
            "privacy.dp='implicit-dp'",
            "federation.aggregation='ffa'",
            "model.lora_a_init='gaussian'",
            "federation.rounds=2",
        ],
    ),
    "mild": (MILD, []),  # the quickstart of v0.1 (configs/default.toml until issue 11)
}
QUICK = [c for c in CASES if c != "mild"]


def _strip_timing(value: Any) -> Any:
    """Drop wall-clock keys (``*_s``, ``seconds``) at any depth: they are machine noise."""
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items() if not (k.endswith("_s") or k == "seconds")}
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


def numbers(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_metrics(run_dir)
    return {
        "summary": {k: summary.get(k) for k in ("privacy", "quality", "communication", "adapter_rank", "client_ranks")},
        "metrics": _strip_timing(rows),
    }


def run_case(name: str) -> Path:
    config, overrides = CASES[name]
    return fedlora_run(config, overrides, ROOT / RUNS / name, fresh=True, quiet=True)


def differences(old: Any, new: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, what differs) for every leaf that is not bit-identical; floats also give the size of the gap."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            if k not in new:
                out.append((f"{path}.{k}", "missing now"))
            elif k not in old:
                out.append((f"{path}.{k}", "new key"))
            else:
                out += differences(old[k], new[k], f"{path}.{k}")
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [(path, f"length {len(old)} -> {len(new)}")]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]")]
    if old == new:
        return []
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and math.isfinite(old) and math.isfinite(new):
        return [(path, f"{old!r} -> {new!r} (|diff| {abs(new - old):.3g})")]
    return [(path, f"{old!r} -> {new!r}")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["record", "check"])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--quick", action="store_true", help="every case but the mild run (~7 minutes instead of ~15)")
    args = ap.parse_args()
    cases = QUICK if args.quick else args.cases
    RECORDS.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in cases:
        got = numbers(run_case(name))
        record = RECORDS / f"{name}.json"
        if args.mode == "record":
            record.write_text(
                json.dumps({"case": name, "config": CASES[name][0], "overrides": CASES[name][1], **got}, indent=1)
                + "\n"
            )
            print(f"[regression] {name}: recorded {record.relative_to(ROOT)}")
            continue
        if not record.is_file():
            raise FileNotFoundError(f"{record} is missing: run `python scripts/regression_check.py record` first")
        want = json.loads(record.read_text())
        diffs = differences({"summary": want["summary"], "metrics": want["metrics"]}, got)
        if diffs:
            failed.append(name)
            print(f"[regression] {name}: {len(diffs)} value(s) moved")
            for where, what in diffs[:20]:
                print(f"    {where}: {what}")
        else:
            print(f"[regression] {name}: identical")
    if failed:
        print(f"[regression] numbers moved in: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

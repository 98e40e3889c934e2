"""Wall time per round, peak memory and framework overhead as the number of clients grows.

Each case is one ``fedlora run`` in its own process tree (Ray's workers included) on Shapes-20k
(fedlora/data/shapes.py) with 4 members + 4 non-members per client and the same clients trained
per round, and a minimal audit (no per-client attacks, few samples), so that what changes
between cases is the number of clients only. Per case:
  peak_rss_gib     the largest sum of resident set sizes over the process tree (scripts/measure.py)
  round_s          the server's wall time per round (metrics.jsonl), first round included
  overhead         sum of round_s / sum over rounds of (sum of the clients' train_s / parallel slots),
                   parallel slots = min(clients per round, Ray CPUs / simulation.num_cpus_per_client)
  setup_share      per round, the clients' set-up (setup_s: model load, data, encoding; sum / slots) as a share of
                   round_s: where a first round's overhead goes
  discovery_s      the wall time of client discovery before round 1 (metrics.jsonl round 0), which includes
                   the Ray workers' warm-up (model, dataset, splits: clients.handlers.warm_shared)
and, over the cases, peak_ratio_last_over_middle (the issue's target: 1,000 vs 100 clients <= 1.2).
Usage: python scripts/bench_scale.py [--clients 8 100 1000] [--per-round 8] [--rounds 2]
       [--out docs/measurements/scale.json] [--set key=value ...] [--quick]
``--quick``: 2 and 4 clients, 2 per round, 1 round, a few local steps (seconds; the test runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MINIMAL_AUDIT = [
    "data.dataset='shapes'",
    "data.members_per_client=4",
    "data.nonmembers_per_client=4",
    "evaluation.attack_clients=false",
    "evaluation.attacks=['loss-threshold']",
    "evaluation.num_samples=1",
    "evaluation.sample_steps=1",
    "evaluation.eval_members=8",
    "evaluation.loss_timesteps=1",
    "evaluation.quality_samples=0",
    "evaluation.loss_attack_draws=1",
    "simulation.num_cpus_per_client=1",
]
QUICK = ["train.local_steps=2", "train.batch_size=4"]


def overhead(rows: list[dict[str, Any]], slots: int) -> tuple[float, list[float]]:
    """The run's framework overhead and each round's (round wall / (clients' train_s / slots))."""
    per_round, walls, ideals = [], 0.0, 0.0
    for row in rows:
        if row.get("round", 0) < 1 or "clients" not in row:
            continue
        ideal = sum(float(c["train_s"]) for c in row["clients"].values()) / slots
        per_round.append(round(row["round_s"] / ideal, 3))
        walls, ideals = walls + row["round_s"], ideals + ideal
    return (round(walls / ideals, 3) if ideals else float("nan")), per_round


def setup_share(rows: list[dict[str, Any]], slots: int) -> list[float | None]:
    """Per round: the clients' set-up time (sum of setup_s / slots) over the round's wall time."""
    shares: list[float | None] = []
    for row in rows:
        if row.get("round", 0) < 1 or "clients" not in row:
            continue
        setups = [float(c["setup_s"]) for c in row["clients"].values() if "setup_s" in c]
        shares.append(round(sum(setups) / slots / row["round_s"], 3) if setups else None)
    return shares


def run_case(
    num_clients: int, per_round: int, rounds: int, cpus: int, overrides: list[str], out_dir: Path
) -> dict[str, Any]:
    name = f"scale-{num_clients}"
    sets = [
        *MINIMAL_AUDIT,
        f"federation.num_clients={num_clients}",
        f"federation.clients_per_round={per_round}",
        f"federation.rounds={rounds}",
        f"simulation.ray_num_cpus={cpus}",
        f"run.output_dir='{out_dir}'",
        f"run.name='{name}'",
        *overrides,
    ]
    cmd = [sys.executable, "-m", "fedlora.cli", "run", "configs/smoke.toml", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0", "RAY_ADDRESS": ""}
    log = out_dir / f"{name}.log"
    with open(log, "w") as fh:
        code, wall, peak = run_measured(cmd, cwd=ROOT, env=env, stdout=fh, stderr=fh)
    if code != 0:
        raise RuntimeError(f"{num_clients} clients: fedlora run exited {code}; last lines:\n{log.read_text()[-2000:]}")
    rows = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
    slots = max(1, min(per_round, cpus))
    total, per = overhead(rows, slots)
    round_s = [round(r["round_s"], 2) for r in rows if r.get("round", 0) >= 1 and "round_s" in r]
    return {
        "num_clients": num_clients,
        "clients_per_round": per_round,
        "rounds": rounds,
        "parallel_slots": slots,
        "run_wall_s": round(wall, 1),
        "peak_rss_gib": round(peak / 2**30, 3),
        "round_s": round_s,
        "mean_round_s": round(sum(round_s) / len(round_s), 2),
        "overhead": total,
        "overhead_per_round": per,
        "setup_share_per_round": setup_share(rows, slots),
        "discovery_s": next((round(r["discovery_s"], 2) for r in rows if "discovery_s" in r), None),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[8, 100, 1000])
    ap.add_argument("--per-round", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="Ray CPUs (simulation.ray_num_cpus)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="docs/measurements/scale.json")
    args = ap.parse_args(argv)
    clients, per_round, rounds, overrides = args.clients, args.per_round, args.rounds, list(args.overrides)
    if args.quick:
        clients, per_round, rounds, overrides = [2, 4], 2, 1, [*QUICK, *overrides]
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        cases = [run_case(n, per_round, rounds, args.cpus, overrides, Path(tmp)) for n in clients]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "quick": args.quick,
        "overrides": overrides,
        "cases": cases,
        "peak_ratio_last_over_middle": (
            round(cases[-1]["peak_rss_gib"] / cases[-2]["peak_rss_gib"], 3) if len(cases) >= 2 else None
        ),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for c in cases:
        print(
            f"{c['num_clients']:>5} clients: peak {c['peak_rss_gib']:.2f} GiB, round {c['mean_round_s']:.1f} s, "
            f"overhead {c['overhead']:.2f} {c['overhead_per_round']}, discovery {c['discovery_s']} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

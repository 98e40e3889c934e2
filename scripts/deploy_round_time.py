"""Where a deployment round's wall time goes (issue 15): Flower's delivery, the ClientApp process's start-up,
loading the model and the data, and training.

A SuperLink and N SuperNodes on 127.0.0.1 with TLS and SuperNode authentication (``fedlora deploy``), each with
its own image folder, run R rounds of SMP-LoRA on ``configs/smoke.toml``. For every round it reads from
``metrics.jsonl`` the server's wall time (``round_s``) and each silo's ``train_s`` (training), ``setup_s``
(model, data, encoding, proxy-attacker batches) and ``process_s`` (the ClientApp process's age at its reply:
start-up and imports included). The target (issue 15): round wall time ≤ 2 × the slowest silo's training time
+ 5 s. Results go to ``docs/measurements/deploy-rounds.json`` (``--out``). Not in the test suite (minutes);
every process it starts is ended by its PID.

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python scripts/deploy_round_time.py [--silos 3] [--rounds 3]
    PATH=$PWD/.venv/bin:$PATH .venv/bin/python scripts/deploy_round_time.py --workers   # long-lived silo workers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from deploy_resume_check import end_all, free_port, silo_folder, submit

from fedlora import deploy
from fedlora.protocol import OUTPUT_DIR, PROCESS_AGE

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = (
    "data.dataset='silo' federation.num_clients={n} federation.rounds={r} train.method='smp-lora' "
    "evaluation.attacks=[] evaluation.quality_samples=0"
)
RUN_TIMEOUT_S = 900.0


def slowest(clients: list[dict], key: str) -> float | None:
    values = [c[key] for c in clients if key in c]
    return round(max(values), 2) if values else None


def round_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out = []
    for row in rows:
        clients = list(row.get("clients", {}).values())
        if not clients:
            continue  # round 0: the audit of the base model, no training

        train, process = slowest(clients, "train_s"), slowest(clients, PROCESS_AGE)
        round_s = round(row["round_s"], 2)
        out.append(
            {
                "round": row["round"],
                "round_s": round_s,
                "train_s": train,
                "setup_s": slowest(clients, "setup_s"),
                "process_s": process,
                "delivery_s": None if process is None else round(round_s - process, 2),
                "target_s": None if train is None else round(2 * train + 5, 2),
                "meets_target": None if train is None else round_s <= 2 * train + 5,
            }
        )
    return out


def discovery_seconds(run_dir: Path) -> float | None:
    """Discovery's wall time (round 0's row): the silos' queries, and their workers' warm-up with them."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "discovery_s" in row:
            return round(row["discovery_s"], 2)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--node-config", action="append", default=[], help="KEY=VALUE for every SuperNode")
    parser.add_argument("--workers", action="store_true", help="give each SuperNode a long-lived worker")
    parser.add_argument("--label", default=None, help="the result's name in --out (default: from --workers)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/measurements/deploy-rounds.json")
    args = parser.parse_args()
    args.label = args.label or ("long-lived silo workers" if args.workers else "per-message ClientApp processes")
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="fedlora-rounds-"))).resolve()
    creds = deploy.Credentials(work / "deploy")
    folders = [silo_folder(work / f"silo{k}", k, 10) for k in range(args.silos)]
    extra: dict[str, str | int] = {"members": 4, "nonmembers": 4, "state-dir": str(work / "state")}
    for item in args.node_config:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--node-config {item!r}: expected KEY=VALUE")
        extra[key] = value.replace("{work}", str(work))
    out = work / "runs"
    procs: list[subprocess.Popen] = []
    started = time.monotonic()
    try:
        procs += deploy.start_local(
            creds,
            folders,
            port=free_port(),
            supernode_ports=[free_port() for _ in range(args.silos)],
            extra=extra,
            workers=args.workers,
        )
        overrides = OVERRIDES.format(n=args.silos, r=args.rounds)
        run = submit(creds, "run", f"config='configs/smoke.toml' {OUTPUT_DIR}='{out}' overrides=\"{overrides}\"", procs)
        run.wait(timeout=RUN_TIMEOUT_S)
    finally:
        end_all(procs)
    rows = round_rows(out / "smoke")
    result = {
        "label": args.label,
        "silos": args.silos,
        "rounds": args.rounds,
        "config": "configs/smoke.toml, data.dataset='silo', smp-lora, 4 + 4 members/non-members per silo",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "total_s": round(time.monotonic() - started, 1),
        "discovery_s": discovery_seconds(out / "smoke"),
        "per_round": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous[args.label] = result
    args.out.write_text(json.dumps(previous, indent=1) + "\n")
    for r in rows:
        print(
            f"round {r['round']}: wall {r['round_s']} s | slowest silo: train {r['train_s']} s,"
            f" set-up {r['setup_s']} s, process age {r['process_s']} s | delivery {r['delivery_s']} s |"
            f" target ≤ {r['target_s']} s: {'met' if r['meets_target'] else 'NOT met'}"
        )
    print(f"wrote {args.out} [{args.label}]; logs in {creds.logs}")
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())

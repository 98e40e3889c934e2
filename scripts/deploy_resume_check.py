"""Resume on the real deployment engine (issue 15): a ServerApp killed after round 1 and resumed ends with the
adapter of an uninterrupted run, tensor by tensor.

A SuperLink and N SuperNodes on 127.0.0.1 with TLS and SuperNode authentication (``fedlora deploy``), each
with its own image folder and ``state-dir``. Run A goes uninterrupted; run B's ``flwr-serverapp`` is killed
(SIGKILL, by its PID) once ``status.json`` says round 1 is complete, then B is submitted again with run config
``resume``. With ``--workers`` (each SuperNode hands its messages to a long-lived worker) it takes ~2-3 minutes
on 2 cores and runs in the test suite (``tests/test_deployment_resume.py``); without, rounds take ~30 s.
Every process it starts is ended by its PID.

    PATH=$PWD/.venv/bin:$PATH python scripts/deploy_resume_check.py [--workdir DIR] [--workers]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
from PIL import Image
from safetensors.numpy import load_file

from fedlora import checkpoint, deploy
from fedlora.data.mnist import load_mnist
from fedlora.protocol import OUTPUT_DIR, RESUME

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = (
    "data.dataset='silo' federation.num_clients={n} federation.rounds=2 train.method='smp-lora' "
    "evaluation.attacks=[] evaluation.quality_samples=0"
)
RUN_TIMEOUT_S = 480.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def silo_folder(root: Path, silo: int, count: int) -> Path:
    """``count`` MNIST digits (disjoint across silos) with a metadata.jsonl."""
    digits = load_mnist(32)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(count):
        i = silo * count + k
        Image.fromarray(digits.images[i]).save(root / f"img_{k:03d}.png")
        rows.append(json.dumps({"file_name": f"img_{k:03d}.png", "text": digits.captions[i]}) + "\n")
    (root / "metadata.jsonl").write_text("".join(rows))
    return root


def submit(creds: deploy.Credentials, name: str, run_config: str, procs: list[subprocess.Popen]) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(ROOT), deploy.CONNECTION, "--stream"]
    env = {**deploy.flwr_env(creds), "FLWR_HOME": str(creds.flwr_home)}
    return deploy.start(creds, name, [*cmd, "--run-config", run_config], env, procs)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s")
        time.sleep(0.5)


def last_round(run_dir: Path) -> int:
    status = checkpoint.read_status(run_dir) if run_dir.exists() else None
    return int((status or {}).get("last_complete_round") or 0)


def serverapps(procs: list[subprocess.Popen]) -> list[psutil.Process]:
    found = []
    for p in procs:
        try:
            found += [c for c in psutil.Process(p.pid).children(recursive=True) if "flwr-serverapp" in c.name()]
        except psutil.NoSuchProcess:
            continue
    return found


def end_all(procs: list[subprocess.Popen]) -> None:
    """Every process started here and its descendants, by PID."""
    tree: list[psutil.Process] = []
    for p in procs:
        try:
            root = psutil.Process(p.pid)
            tree += [*root.children(recursive=True), root]
        except psutil.NoSuchProcess:
            pass
    for proc in tree:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=20)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def adapter(run_dir: Path) -> dict[str, np.ndarray]:
    files = sorted((run_dir / "adapter").glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{run_dir / 'adapter'} holds no safetensors file")
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--silos", type=int, default=2)
    parser.add_argument("--workers", action="store_true", help="give each SuperNode a long-lived worker")
    args = parser.parse_args(argv)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="fedlora-resume-"))).resolve()
    creds = deploy.Credentials(work / "deploy")
    folders = [silo_folder(work / f"silo{k}", k, 10) for k in range(args.silos)]
    overrides = OVERRIDES.format(n=args.silos)
    procs: list[subprocess.Popen] = []
    started = time.monotonic()
    try:
        procs += deploy.start_local(
            creds,
            folders,
            port=free_port(),
            supernode_ports=[free_port() for _ in range(args.silos)],
            extra={"members": 4, "nonmembers": 4, "state-dir": str(work / "state")},
            workers=args.workers,
        )
        runs = {name: work / f"runs-{name}" for name in ("a", "b")}
        for name, out in runs.items():
            config = f"config='configs/smoke.toml' {OUTPUT_DIR}='{out}' overrides=\"{overrides}\""
            run = submit(creds, f"run-{name}", config, procs)
            run_dir = out / "smoke"
            if name == "a":
                run.wait(timeout=RUN_TIMEOUT_S)
                continue
            wait_until(lambda: last_round(run_dir) >= 1, RUN_TIMEOUT_S, "run B's round 1")  # noqa: B023
            killed = serverapps(procs)
            for proc in killed:
                proc.send_signal(signal.SIGKILL)
            print(f"killed flwr-serverapp {[p.pid for p in killed]} after round 1", flush=True)
            run.terminate()  # its ServerApp is gone; the SuperLink marks the run failed on its own (~40 s)
            run.wait(timeout=30)
            resumed = submit(creds, "run-b-resume", f"{RESUME}='{run_dir}'", procs)
            resumed.wait(timeout=RUN_TIMEOUT_S)
    finally:
        end_all(procs)
    a, b = adapter(runs["a"] / "smoke"), adapter(runs["b"] / "smoke")
    if set(a) != set(b):
        print(f"FAIL: the adapters hold different tensors: {sorted(set(a) ^ set(b))[:5]}")
        return 1
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    rows = [json.loads(line) for line in (runs["b"] / "smoke" / "metrics.jsonl").read_text().splitlines()]
    print(
        f"run B rounds {[r['round'] for r in rows]}; {len(a)} tensors; {time.monotonic() - started:.0f} s; "
        f"logs in {creds.logs}"
    )
    if differ:
        print(f"FAIL: {len(differ)} of {len(a)} tensors differ from the uninterrupted run's, e.g. {differ[:3]}")
        return 1
    print("OK: the resumed run's adapter equals the uninterrupted run's, tensor by tensor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

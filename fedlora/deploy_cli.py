"""``fedlora deploy``: credentials, SuperLink, SuperNodes and runs of a cross-silo deployment (``fedlora.deploy``).

One host: ``fedlora deploy local DIR --data-path A --data-path B`` then ``fedlora deploy run DIR CONFIG
--output-dir /abs/runs`` (``--resume RUN_DIR`` continues a run) and ``fedlora deploy stop DIR``.
Real hosts: ``init`` once, copy the files the README's "Cross-silo deployment" lists, then
``superlink`` on the server, ``register`` from the host that runs ``flwr``, ``supernode`` on each
silo, and ``run``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from . import deploy
from .config import ConfigError
from .protocol import NODE_WORKER, OUTPUT_DIR, RESUME


def _creds(args: argparse.Namespace) -> deploy.Credentials:
    return deploy.Credentials(Path(args.dir).expanduser().resolve())


def _exec(argv: list[str], env: dict[str, str], dry: bool) -> int:
    """Print the command; unless ``--print``, replace this process with it (its PID stays the one you started)."""
    print(shlex.join(argv), flush=True)
    if dry:
        return 0
    os.execvpe(argv[0], argv, env)


def _cmd_init(args: argparse.Namespace) -> int:
    creds = _creds(args)
    deploy.make_certificates(creds, args.host, days=args.days)
    for k in range(args.supernodes):
        deploy.make_supernode_key(creds, k)
    print(f"CA {creds.ca_cert}; SuperLink certificate for {', '.join(args.host)}; {args.supernodes} SuperNode keys")
    return 0


def _cmd_superlink(args: argparse.Namespace) -> int:
    creds = _creds(args)
    env = {**deploy.flwr_env(creds), "FLWR_HOME": str(creds.flwr_home / "superlink")}
    return _exec(deploy.superlink_argv(creds, args.host, args.port), env, args.print)


def _cmd_register(args: argparse.Namespace) -> int:
    creds = _creds(args)
    deploy.write_connection(creds, args.superlink)
    for k in args.supernodes:
        print(deploy.register_supernode(creds, k).strip())
    return 0


def _extra_node_config(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs for the node config (values as JSON when they parse: numbers, booleans)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--node-config {item!r}: expected KEY=VALUE, e.g. members=16")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _cmd_supernode(args: argparse.Namespace) -> int:
    creds = _creds(args)
    env = {**deploy.flwr_env(creds), "FLWR_HOME": str(creds.flwr_home / f"sn{args.k}")}
    extra = _extra_node_config(args.node_config)
    if args.worker:
        extra[NODE_WORKER] = str(creds.worker_socket(args.k))
    argv = deploy.supernode_argv(creds, args.k, args.superlink, args.data_path, args.num_partitions, args.port, extra)
    return _exec(argv, env, args.print)


def _cmd_worker(args: argparse.Namespace) -> int:
    creds = _creds(args)
    socket = creds.worker_socket(args.k)
    socket.parent.mkdir(parents=True, exist_ok=True)
    return _exec(deploy.worker_argv(socket), deploy.flwr_env(creds), args.print)


def _cmd_local(args: argparse.Namespace) -> int:
    creds = _creds(args)
    procs = deploy.start_local(
        creds,
        args.data_path,
        args.host,
        args.port,
        extra=_extra_node_config(args.node_config),
        timeout=args.timeout,
        workers=args.workers,
    )
    workers = f" (each with a worker in {creds.root / 'workers'})" if args.workers else ""
    print(
        f"SuperLink and {len(args.data_path)} SuperNodes{workers} on {args.host}:{args.port}; "
        f"PIDs {[p.pid for p in procs]}"
    )
    print(f"logs in {creds.logs}; end them with: fedlora deploy stop {creds.root}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    creds = _creds(args)
    if args.resume:  # the ServerApp continues the folder with its own config.toml
        if args.config or args.overrides or args.output_dir:
            raise ConfigError(
                "deploy run --resume RUN_DIR continues the run as configured: no CONFIG, --set or --output-dir"
            )
        run_config = f"{RESUME}={json.dumps(str(Path(args.resume).expanduser().resolve()))}"
    elif not (args.config and args.output_dir):
        raise ConfigError("deploy run takes CONFIG and --output-dir (or --resume RUN_DIR to continue a run)")
    else:
        output = Path(args.output_dir).expanduser().resolve()
        # config: relative to the app (its FAB ships configs/), or absolute on the SuperLink's host
        run_config = f"config={json.dumps(args.config)} {OUTPUT_DIR}={json.dumps(str(output))}"
        if args.overrides:
            run_config += " overrides=" + json.dumps(" ".join(args.overrides))
    argv = [str(Path(sys.executable).parent / "flwr"), "run", str(Path(args.app).resolve()), args.connection]
    argv += ["--stream", "--run-config", run_config]
    return _exec(argv, {**deploy.flwr_env(creds), "FLWR_HOME": str(creds.flwr_home)}, args.print)


def _cmd_stop(args: argparse.Namespace) -> int:
    pids = deploy.stop_recorded(_creds(args))
    print(f"sent SIGTERM to the process groups {pids}" if pids else f"no {deploy.PIDS_FILE} in {args.dir}")
    return 0


def add_parser(sub: Any) -> None:
    """``fedlora deploy <step>``; every step takes the deployment folder ``DIR`` first."""
    top = sub.add_parser("deploy", help="cross-silo deployment: TLS credentials, SuperLink, SuperNodes, runs")
    steps = top.add_subparsers(dest="step", required=True)

    def step(name: str, help: str) -> argparse.ArgumentParser:
        p = steps.add_parser(name, help=help)
        p.add_argument("dir", help="the deployment folder (certificates, keys, flwr-home, logs)")
        return p

    p = step("init", "make a CA, the SuperLink's TLS certificate and SuperNode key pairs")
    p.add_argument("--host", action="append", required=True, help="the SuperLink's IP or DNS name (repeatable)")
    p.add_argument("--supernodes", type=int, required=True, help="how many SuperNode key pairs")
    p.add_argument("--days", type=int, default=365, help="certificate validity")
    p.set_defaults(func=_cmd_init)

    p = step("superlink", "start the SuperLink with TLS and SuperNode authentication (this host)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=deploy.DEFAULT_PORT, help="the one port to open to the silos")
    p.add_argument("--print", action="store_true", help="print the command only")
    p.set_defaults(func=_cmd_superlink)

    p = step("register", "register SuperNode public keys with the running SuperLink")
    p.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink, as its certificate names it")
    p.add_argument("supernodes", type=int, nargs="+", help="SuperNode numbers k (supernodes/sn<k>.pub)")
    p.set_defaults(func=_cmd_register)

    p = step("supernode", "start SuperNode k with its key and its own data folder (this host)")
    p.add_argument("k", type=int, help="its number: key supernodes/sn<k>, partition id k")
    p.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    p.add_argument("--data-path", required=True, help="this silo's image folder (metadata.jsonl or .txt captions)")
    p.add_argument("--num-partitions", type=int, required=True, help="how many silos the federation has")
    p.add_argument("--port", type=int, default=deploy.SUPERNODE_PORT, help="its local ClientAppIO port")
    p.add_argument("--node-config", action="append", default=[], metavar="KEY=VALUE", help="e.g. members=16")
    p.add_argument("--worker", action="store_true", help="hand its messages to 'fedlora deploy worker DIR k'")
    p.add_argument("--print", action="store_true", help="print the command only")
    p.set_defaults(func=_cmd_supernode)

    p = step("worker", "start SuperNode k's long-lived worker: the model and the data stay loaded between rounds")
    p.add_argument("k", type=int, help="its SuperNode's number (socket workers/sn<k>.sock)")
    p.add_argument("--print", action="store_true", help="print the command only")
    p.set_defaults(func=_cmd_worker)

    p = step("local", "start a SuperLink and one SuperNode per --data-path on this host, registered")
    p.add_argument("--data-path", action="append", required=True, help="one silo's image folder (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=deploy.DEFAULT_PORT)
    p.add_argument("--node-config", action="append", default=[], metavar="KEY=VALUE", help="for every SuperNode")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the SuperLink")
    p.add_argument("--workers", action="store_true", help="give each SuperNode a long-lived worker (faster rounds)")
    p.set_defaults(func=_cmd_local)

    p = step("run", "submit a run with flwr run (the run folder goes to --output-dir on the SuperLink's host)")
    p.add_argument("config", nargs="?", help="experiment TOML; data.dataset = 'silo' for per-silo data")
    p.add_argument("--output-dir", help="where the run folder goes (absolute on the SuperLink host)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue that run folder (on the SuperLink host) from its checkpoint"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--app", default=".", help="the fedlora project folder (its pyproject.toml)")
    p.add_argument("--connection", default=deploy.CONNECTION, help="the SuperLink connection in flwr-home")
    p.add_argument("--print", action="store_true", help="print the command only")
    p.set_defaults(func=_cmd_run)

    p = step("stop", "end the processes 'fedlora deploy local' started (by their recorded PIDs)")
    p.set_defaults(func=_cmd_stop)

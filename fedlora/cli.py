"""The ``fedlora`` command: pretrain the embedded base, run an experiment, re-evaluate and compare runs,
deploy across silos."""

from __future__ import annotations

import argparse
import shlex
import sys

from .config import ConfigError, load_config


def _add_config_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("config", nargs="?" if optional else None, help="experiment TOML (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key, e.g. --set federation.rounds=3 (repeatable)",
    )


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import torch

    from .data import load_dataset, public_subset
    from .evaluation.samples import generate, save_grid
    from .models.base import load_pipeline
    from .models.pretrain import pretrain

    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = pretrain(cfg, command="fedlora pretrain " + " ".join(shlex.quote(a) for a in sys.argv[2:]))
    pipe = load_pipeline(str(out), cached=False)
    public = public_subset(load_dataset(cfg.data), cfg.data)
    captions = sorted(set(public.captions))[:10]
    grid_captions = [c for c in captions for _ in range(4)]
    images = generate(
        pipe,
        grid_captions,
        steps=cfg.evaluation.sample_steps,
        guidance_scale=cfg.evaluation.guidance_scale,
        seed=cfg.pretrain.seed,
    )
    # one column per caption: transpose the (caption, seed) order into rows of seeds
    order = [c * 4 + s for s in range(4) for c in range(len(captions))]
    grid = save_grid(
        images[order], args.grid, ncols=len(captions), labels=[grid_captions[i].split()[-1] for i in order]
    )
    print(f"base model saved to {out}; sample grid {grid}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import interrupt
    from .checkpoint import resume_config
    from .simulation import run_experiment

    resume = Path(args.resume) if args.resume else None
    if (args.config is None) == (resume is None):
        raise ConfigError("fedlora run takes either a config file or --resume RUN_DIR (not both, not neither)")
    if resume is not None:
        if args.overrides:
            raise ConfigError("--resume continues the run as it was configured: --set is not allowed with it")
        cfg = resume_config(resume)  # refuses a folder without a checkpoint before anything starts
    else:
        cfg = load_config(args.config, args.overrides)
    try:
        run_dir = run_experiment(cfg, resume=resume)
    except interrupt.RunInterrupted as stop:
        print(str(stop), file=sys.stderr)
        return interrupt.EXIT_CODE
    print(f"run finished: {run_dir}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .reevaluate import evaluate_run

    torch.set_num_threads(1)  # one thread: see the note in server/app.py
    summary = evaluate_run(args.run_dir, args.overrides)
    attacks = ", ".join(f"{a} ASR {m['asr']:.3f}" for a, m in summary["privacy"]["global"].items())
    print(f"re-evaluated {args.run_dir}: {attacks}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .reports import compare_runs

    table, figure = compare_runs(args.run_dirs, args.out)
    print(f"comparison table {table}; privacy-quality scatter {figure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedlora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="train the base LDM on the public split and save it")
    _add_config_args(p)
    p.add_argument("--grid", default="docs/base_samples.png", help="where to write the sample grid")
    p.set_defaults(func=_cmd_pretrain)
    p = sub.add_parser("run", help="run a federated LoRA experiment in simulation (Flower + Ray)")
    _add_config_args(p, optional=True)
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last complete round (no config)"
    )
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("evaluate", help="attack and score a finished run again (no training)")
    p.add_argument("run_dir", help="a run folder, e.g. runs/default")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="evaluation.KEY=VALUE",
        help="change an [evaluation] key, e.g. --set \"evaluation.attacks=['pia','secmi']\" (repeatable)",
    )
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser("compare", help="a comparison table and a privacy-quality scatter across runs")
    p.add_argument("run_dirs", nargs="+", help="run folders")
    p.add_argument("--out", default="runs/comparison", help="folder for comparison.md and privacy_quality.png")
    p.set_defaults(func=_cmd_compare)
    from .deploy_cli import add_parser as add_deploy

    add_deploy(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

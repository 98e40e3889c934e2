"""``fedlora evaluate RUN_DIR``: attack and score a finished run again, without training.

Everything comes from the run folder: the resolved config, the splits, and the audited models
in ``views/`` (the global model and each client's last update as the server saw it). Only
``[evaluation]`` keys may be overridden (more attacks, more epochs): anything else would describe
another run. Training-time numbers (timing, communication, DP) are kept from the old summary.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, ExperimentConfig, load_config, parse_override
from .data import Splits, uses_silo_data
from .errors import RunFolderError
from .finalize import RunResult, evaluate_outputs
from .models.lora import ADAPTER_WEIGHTS, ModelView
from .outputs import ADAPTER_DIR, CONFIG_FILE, GLOBAL_VIEW, SPLITS_FILE, SUMMARY_FILE, VIEWS_DIR, RunOutputs
from .reports import Communication, RunSummary, Timing, load_summary, write_reports
from .run_files import read_config, read_splits, read_tensors, read_view
from .run_status import refuse_unfinished
from .runtime import get_runtime


def _global_view(outputs: RunOutputs, adapter_rank: int, runtime_rank: int) -> ModelView:
    """views/global.safetensors, or for older runs the diffusers adapter when it is a plain rank-r LoRA."""
    path = outputs.view_path(GLOBAL_VIEW)
    weights = outputs.path(ADAPTER_DIR) / ADAPTER_WEIGHTS
    adapter = read_tensors(weights) if weights.is_file() else None  # read through even when unused: it is the release
    if path.is_file():
        return read_view(path)
    if adapter is not None and adapter_rank == runtime_rank:

        def peft_key(key: str) -> str:  # diffusers' export names attention LoRAs lora.down / lora.up
            return (
                key.removeprefix("unet.")
                .replace(".lora.down.weight", ".lora_A.weight")
                .replace(".lora.up.weight", ".lora_B.weight")
            )

        return ModelView(lora={peft_key(k): v.numpy() for k, v in adapter.items()})
    raise RunFolderError.missing(
        path, f"and {weights} is not a rank-{runtime_rank} LoRA of this config: nothing to evaluate"
    )


def _client_views(root: Path) -> dict[int, ModelView]:
    views = {}
    for p in sorted((root / VIEWS_DIR).glob("client_*.safetensors")):
        cid = p.stem.removeprefix("client_")
        if not cid.isdigit():
            raise RunFolderError.damaged(p, "a client view is named client_<id>.safetensors with a numeric id")
        views[int(cid)] = read_view(p)
    return views


def _check_same_run(root: Path, cfg: ExperimentConfig, old: RunSummary, splits: Splits) -> None:
    """A truncated config.toml can still parse (missing keys take defaults): it must describe the run summarised."""
    recorded = {
        "train.method": (cfg.train.method, old.method),
        "federation.aggregation": (cfg.federation.aggregation, old.aggregation),
        "federation.num_clients": (cfg.federation.num_clients, old.num_clients),
        "federation.rounds": (cfg.federation.rounds, old.rounds),
        "run.seed": (cfg.run.seed, old.seed),
        "data.dataset": (cfg.data.dataset, old.dataset),
    }
    for key, (configured, summarised) in recorded.items():
        if summarised is not None and configured != summarised:
            raise RunFolderError.damaged(
                root / CONFIG_FILE, f"{key} = {configured!r} there but {summarised!r} in {SUMMARY_FILE}"
            )
    if len(splits.clients) != cfg.federation.num_clients:
        raise RunFolderError.damaged(
            root / SPLITS_FILE,
            f"it lists {len(splits.clients)} clients but {CONFIG_FILE} has federation.num_clients = "
            f"{cfg.federation.num_clients}",
        )


def evaluate_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Attack and score the run folder again; returns (and writes) its new summary.json.

    Every file it needs is read (and a missing or damaged one refused) before the audit starts.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {root} does not exist")
    refuse_unfinished(root, SUMMARY_FILE)
    for text in overrides:
        key, _ = parse_override(text)
        if not key.startswith("evaluation."):
            raise ConfigError(f"fedlora evaluate only changes [evaluation] keys; {key!r} would describe another run")
    read_config(root / CONFIG_FILE)  # the file as written; the overrides' own errors name the override
    cfg = load_config(root / CONFIG_FILE, overrides)
    if uses_silo_data(cfg):
        raise ConfigError(
            f"{root} is a per-silo run (data.dataset = 'silo'): its audit ran at the silos, and this machine "
            "holds none of their data to attack the model with again"
        )
    outputs = RunOutputs(root)
    old = load_summary(root)
    splits = read_splits(root / SPLITS_FILE)
    _check_same_run(root, cfg, old, splits)
    outputs.read_metrics()  # a damaged metrics.jsonl would only be found at the training figure
    adapter_rank = cfg.model.lora_rank if old.adapter_rank is None else int(old.adapter_rank)
    view = _global_view(outputs, adapter_rank, cfg.model.lora_rank)
    clients = _client_views(root)
    runtime = get_runtime(cfg)
    trained = old.timing or Timing()
    dp = dict(old.privacy.dp or {})
    result = RunResult(
        dataclasses.replace(trained, eval_s=0.0),
        old.communication or Communication(),
        dp=dp if dp.get("mechanism", "none") != "none" else {},
        adapter_rank=int(old.adapter_rank or 0),
        secure_aggregation=None if old.secure_aggregation is None else dict(old.secure_aggregation),
        failures=old.failures,  # the training run's, kept as they were
    )
    t0 = time.perf_counter()
    summary = evaluate_outputs(outputs, cfg, runtime, splits, view, clients, result, t0, started=None)
    # timing stays the training run's; the re-evaluation's own time is added next to it
    summary.timing = dataclasses.replace(trained, reevaluate_s=result.timing.eval_s)
    if not clients and old.privacy.clients and cfg.evaluation.attack_clients:
        # a run from before views/ existed: its client updates are gone, keep their training-time audit
        summary.privacy.clients = old.privacy.clients
        summary.privacy.clients_from = "training-time audit (no saved client updates to re-attack)"
    summary.write(root)
    (root / CONFIG_FILE).write_text(cfg.to_toml())  # the evaluation keys now match summary.json
    write_reports(root)
    return summary.to_dict()

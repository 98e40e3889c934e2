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

from .config import ConfigError, load_config, parse_override
from .data import Splits
from .finalize import RunResult, evaluate_outputs
from .models.lora import ADAPTER_WEIGHTS, ModelView, load_view
from .outputs import ADAPTER_DIR, CONFIG_FILE, GLOBAL_VIEW, SPLITS_FILE, SUMMARY_FILE, VIEWS_DIR, RunOutputs
from .reports import Communication, Timing, load_summary, write_reports
from .runtime import get_runtime


def _global_view(outputs: RunOutputs, adapter_rank: int, runtime_rank: int) -> ModelView:
    """views/global.safetensors, or for older runs the diffusers adapter when it is a plain rank-r LoRA."""
    path = outputs.view_path(GLOBAL_VIEW)
    if path.is_file():
        return load_view(path)
    weights = outputs.path(ADAPTER_DIR) / ADAPTER_WEIGHTS
    if weights.is_file() and adapter_rank == runtime_rank:
        from safetensors.torch import load_file

        def peft_key(key: str) -> str:  # diffusers' export names attention LoRAs lora.down / lora.up
            return (
                key.removeprefix("unet.")
                .replace(".lora.down.weight", ".lora_A.weight")
                .replace(".lora.up.weight", ".lora_B.weight")
            )

        return ModelView(lora={peft_key(k): v.numpy() for k, v in load_file(str(weights)).items()})
    raise FileNotFoundError(
        f"{path} is missing and {weights} is not a rank-{runtime_rank} LoRA of this config: nothing to evaluate"
    )


def evaluate_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Attack and score the run folder again; returns (and writes) its new summary.json."""
    root = Path(run_dir)
    for name in (CONFIG_FILE, SPLITS_FILE, SUMMARY_FILE):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} is missing: {root} is not a finished fedlora run folder")
    for text in overrides:
        key, _ = parse_override(text)
        if not key.startswith("evaluation."):
            raise ConfigError(f"fedlora evaluate only changes [evaluation] keys; {key!r} would describe another run")
    cfg = load_config(root / CONFIG_FILE, overrides)
    outputs = RunOutputs(root)
    old = load_summary(root)
    splits = Splits.load(root / SPLITS_FILE)
    adapter_rank = cfg.model.lora_rank if old.adapter_rank is None else int(old.adapter_rank)
    view = _global_view(outputs, adapter_rank, cfg.model.lora_rank)
    clients = {
        int(p.stem.split("_", 1)[1]): load_view(p) for p in sorted((root / VIEWS_DIR).glob("client_*.safetensors"))
    }
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

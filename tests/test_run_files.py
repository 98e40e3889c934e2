"""A damaged or incomplete run folder: `fedlora evaluate` and `fedlora compare` name the file, exit 2, no traceback.

The folder is built cheaply (no training): the smoke config, hand-made splits, a summary from the
summary builder and tiny safetensors views; the audit itself is never reached.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedlora.cli import main
from fedlora.config import load_config
from fedlora.data import ClientSplit, Splits
from fedlora.finalize import RunResult, build_summary
from fedlora.models.lora import ADAPTER_WEIGHTS, ModelView, save_view
from fedlora.outputs import ADAPTER_DIR, CONFIG_FILE, METRICS_FILE, SPLITS_FILE, SUMMARY_FILE, VIEWS_DIR
from fedlora.reports import Communication, Timing


class AuditStarted(Exception):
    pass


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    """A finished-looking smoke run folder; reaching the model runtime (the audit) raises AuditStarted."""
    import fedlora.reevaluate

    def audit(*args, **kwargs):
        raise AuditStarted

    monkeypatch.setattr(fedlora.reevaluate, "get_runtime", audit)
    cfg = load_config("configs/smoke.toml", [f"run.output_dir='{tmp_path}'"])
    root = tmp_path / "smoke"
    root.mkdir()
    (root / CONFIG_FILE).write_text(cfg.to_toml())
    ids = [f"mnist-{i:05d}" for i in range(40)]
    clients = tuple(
        ClientSplit(
            k,
            tuple(ids[k * 16 : k * 16 + 4]),
            tuple(ids[k * 16 + 4 : k * 16 + 8]),
            tuple(ids[k * 16 + 8 : k * 16 + 12]),
            tuple(ids[k * 16 + 12 : k * 16 + 16]),
        )
        for k in range(cfg.federation.num_clients)
    )
    Splits("mnist", 0, 0, tuple(ids[32:]), clients).save(root / SPLITS_FILE)
    build_summary(cfg, RunResult(Timing(), Communication())).write(root)
    (root / METRICS_FILE).write_text(json.dumps({"round": 0, "member_loss": 0.1}) + "\n")
    lora = {"down_blocks.0.attn.to_q.lora_A.weight": np.ones((4, 8), np.float32)}
    save_view(root / VIEWS_DIR / "global.safetensors", ModelView(lora=lora))
    save_view(root / VIEWS_DIR / "client_0.safetensors", ModelView(lora=lora))
    from safetensors.torch import save_file

    (root / ADAPTER_DIR).mkdir()
    save_file({"unet.down.lora.down.weight": torch.ones(4, 8)}, str(root / ADAPTER_DIR / ADAPTER_WEIGHTS))
    return root


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def drop_client_1(path: Path) -> None:
    raw = json.loads(path.read_text())
    del raw["clients"]["1"]
    path.write_text(json.dumps(raw))


def refused(capsys, argv: list[str]) -> str:
    """Exit 2 with one line on stderr, no traceback; returns that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_the_healthy_folder_passes_every_check(run_dir):
    with pytest.raises(AuditStarted):
        main(["evaluate", str(run_dir)])


@pytest.mark.parametrize(
    "name, damage, expected",
    [
        (f"{VIEWS_DIR}/global.safetensors", truncate, "is damaged: Error while deserializing header"),
        (f"{VIEWS_DIR}/client_0.safetensors", lambda p: truncate(p, 0.9), "is damaged: Error while deserializing"),
        (f"{VIEWS_DIR}/global.safetensors", lambda p: p.write_bytes(b""), "is damaged: Error while deserializing"),
        (f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}", truncate, "is damaged: Error while deserializing header"),
        (SUMMARY_FILE, truncate, "is damaged: not valid JSON"),
        (SUMMARY_FILE, Path.unlink, "is missing"),
        (SPLITS_FILE, truncate, "is damaged: not valid JSON"),
        (SPLITS_FILE, lambda p: p.write_text('{"dataset": "mnist"}'), "is damaged: no 'seed' key"),
        (SPLITS_FILE, Path.unlink, "is missing"),
        (
            SPLITS_FILE,
            lambda p: p.write_text(p.read_text().replace('"1": {', '"x": {')),
            "is damaged: client entry 'x'",
        ),
        (SPLITS_FILE, drop_client_1, "is damaged: it lists 1 clients but config.toml has federation.num_clients = 2"),
        (METRICS_FILE, lambda p: p.write_text(p.read_text() + '{"round": 1, "memb'), "is damaged: line 2 is not valid"),
        (CONFIG_FILE, lambda p: truncate(p, 0.3), "is damaged: it ends mid-line"),
        (CONFIG_FILE, lambda p: p.write_text(p.read_text()[:-1] + "= x\n"), "is damaged: not valid TOML"),
        (
            CONFIG_FILE,
            lambda p: p.write_text(p.read_text().split("[privacy]")[0]),
            "is damaged: no [privacy], [pretrain]",
        ),
        (CONFIG_FILE, Path.unlink, "is missing"),
    ],
)
def test_evaluate_names_the_damaged_file(run_dir, capsys, name, damage, expected):
    path = run_dir / name
    damage(path)
    err = refused(capsys, ["evaluate", str(run_dir)])
    assert err == f"error: {path} {expected}" or err.startswith(f"error: {path} {expected}"), err


def test_a_config_of_another_run_is_caught(run_dir, capsys):
    """A whole, valid config.toml that does not describe the run summarised (copied over, edited by hand)."""
    path = run_dir / CONFIG_FILE
    path.write_text(path.read_text().replace("num_clients = 2", "num_clients = 8"))
    err = refused(capsys, ["evaluate", str(run_dir)])
    assert err.startswith(f"error: {path} is damaged: federation.num_clients = 8 there but 2 in {SUMMARY_FILE}"), err


def test_no_global_model_to_evaluate_is_named(run_dir, capsys):
    (run_dir / VIEWS_DIR / "global.safetensors").unlink()
    (run_dir / ADAPTER_DIR / ADAPTER_WEIGHTS).unlink()
    err = refused(capsys, ["evaluate", str(run_dir)])
    assert f"{run_dir / VIEWS_DIR / 'global.safetensors'} is missing" in err


def test_compare_names_the_damaged_or_missing_summary(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    out = tmp_path / "comparison"
    truncate(run_dir / SUMMARY_FILE)
    err = refused(capsys, ["compare", str(run_dir), str(other), "--out", str(out)])
    assert err.startswith(f"error: {run_dir / SUMMARY_FILE} is damaged: not valid JSON"), err
    (run_dir / SUMMARY_FILE).write_text("{}")
    err = refused(capsys, ["compare", str(run_dir), str(other), "--out", str(out)])
    assert err == f"error: {other / SUMMARY_FILE} is missing (not a finished run folder?)"
    assert not out.exists()  # refused before writing anything

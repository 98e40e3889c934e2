"""Bad input is refused before Ray starts and before a run folder exists; skipped images are reported."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from fedlora.cli import main
from fedlora.config import load_config
from fedlora.data import DatasetError

SMOKE = "configs/smoke.toml"


def image_folder(root: Path, n: int, bad: tuple[str, ...] = ()) -> Path:
    """``n`` small captioned PNGs (two caption groups) and, for each name in ``bad``, a file that is no image."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i:03d}.png")
        (root / f"img{i:03d}.txt").write_text(f"a {'red' if i % 2 else 'blue'} noise square")
    for name in bad:
        (root / name).write_bytes(b"\x89PNG\r\n\x1a\n truncated by a failed copy")
        (root / name).with_suffix(".txt").write_text("a broken square")
    return root


def folder_overrides(tmp_path: Path, folder: Path, *extra: str) -> list[str]:
    sets = [f"run.output_dir='{tmp_path / 'runs'}'", "data.dataset='folder'", f"data.data_dir='{folder}'", *extra]
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture
def no_ray(monkeypatch):
    """Starting the simulation fails the test; afterwards Ray must not be running."""
    import flwr.simulation

    def started(*args, **kwargs):
        raise AssertionError("run_simulation was called: the bad input was not refused before Ray")

    monkeypatch.setattr(flwr.simulation, "run_simulation", started)
    yield
    import ray

    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "does not exist or is not a directory"),
        ("empty", "holds no images"),
        ("corrupt", r"bad\.png: cannot decode image"),
        ("all-corrupt-skipped", "all 2 images failed to decode"),
        (
            "too-many-clients",
            r"2 clients x 16 samples .* exceeds the 10 private samples; lower federation\.num_clients",
        ),
    ],
)
def test_bad_data_is_refused_with_exit_2_and_leaves_nothing(tmp_path, capsys, no_ray, case, expected):
    folder = tmp_path / "images"
    extra: tuple[str, ...] = ()
    if case == "empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("no images here")
    elif case == "corrupt":
        image_folder(folder, 40, bad=("bad.png",))
    elif case == "all-corrupt-skipped":
        image_folder(folder, 0, bad=("a.png", "b.png"))
        extra = ("data.on_bad_image='skip'",)
    elif case == "too-many-clients":
        image_folder(folder, 20)  # public_fraction 0.5: 10 private, smoke needs 2 x (8 + 8)
    rc = main(["run", SMOKE, *folder_overrides(tmp_path, folder, *extra)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(folder) in err or case == "too-many-clients"
    assert re.search(expected, err), err
    assert not (tmp_path / "runs").exists()  # no run folder, so the next run keeps its name


def test_a_base_model_pretrained_on_other_public_split_is_refused_before_ray(tmp_path, capsys, no_ray):
    rc = main(["run", SMOKE, "--set", f"run.output_dir='{tmp_path / 'runs'}'", "--set", "data.public_fraction=0.3"])
    err = capsys.readouterr().err
    assert rc == 2 and "data.public_fraction = 0.3" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_the_deployment_path_refuses_before_the_run_folder(tmp_path):
    """``flwr run``: the ServerApp's run_federated runs the same preflight before RunOutputs.create."""
    from server.app import run_federated

    overrides = [
        f"run.output_dir='{tmp_path / 'runs'}'",
        "data.dataset='folder'",
        f"data.data_dir='{tmp_path}/nowhere'",
    ]
    cfg = load_config(SMOKE, overrides)
    with pytest.raises(DatasetError, match="nowhere"):
        run_federated(None, cfg)  # type: ignore[arg-type]  # refused before the grid is used
    assert not (tmp_path / "runs").exists()


def test_good_input_passes_once_and_the_run_reuses_what_preflight_loaded(tmp_path, monkeypatch, caplog):
    """Loaded once per process: the second preflight (the ServerApp's) and the run hit the caches;
    a skipped image is one console warning naming it."""
    from fedlora.data import image_folder as loader
    from fedlora.preflight import preflight
    from fedlora.runtime import get_runtime, get_splits

    folder = image_folder(tmp_path / "images", 64, bad=("zz-broken.png",))
    calls = []
    real = loader.load_image_folder
    monkeypatch.setattr(loader, "load_image_folder", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = load_config(
        SMOKE, ["data.dataset='folder'", f"data.data_dir='{folder}'", "data.on_bad_image='skip'", "run.seed=7"]
    )
    with caplog.at_level(logging.WARNING, logger="fedlora"):
        splits = preflight(cfg)
        assert preflight(cfg) is splits
    assert len(calls) == 1
    assert get_splits(cfg) is splits and get_runtime(cfg) is get_runtime(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.name == "fedlora"]
    assert len(warnings) == 1 and "1 undecodable image(s)" in warnings[0] and "zz-broken.png" in warnings[0]


@pytest.mark.timeout(300)
def test_end_to_end_a_skipped_image_is_counted_in_summary_and_reports(tmp_path, caplog):
    """configs/smoke.toml on an image folder with one bad file: the run finishes and names it everywhere."""
    from fedlora.outputs import REPORT_FILE, REPORT_HTML, SUMMARY_FILE

    folder = image_folder(tmp_path / "images", 64, bad=("broken.png",))
    fast = [
        "data.on_bad_image='skip'",
        "evaluation.attacks=['loss-threshold']",
        "evaluation.quality_samples=0",
        "evaluation.attack_clients=false",
    ]
    with caplog.at_level(logging.WARNING, logger="fedlora"):
        assert main(["run", SMOKE, *folder_overrides(tmp_path, folder, *fast)]) == 0
    run_dir = tmp_path / "runs" / "smoke"
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["skipped_images"] == {"count": 1, "files": ["broken.png"]}
    for report in (REPORT_FILE, REPORT_HTML):
        text = (run_dir / report).read_text()
        assert "Images skipped as undecodable" in text and "broken.png" in text, report
    warned = [r.getMessage() for r in caplog.records if "undecodable image(s)" in r.getMessage()]
    assert len(warned) == 1 and "broken.png" in warned[0]  # once, though the driver checks twice

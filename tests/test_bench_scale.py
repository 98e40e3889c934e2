"""scripts/bench_scale.py: its overhead arithmetic, and its quick mode end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overhead_is_round_wall_over_client_compute_per_slot_first_round_included():
    rows = [
        {"round": 0},
        {"round": 1, "round_s": 6.0, "clients": {"0": {"train_s": 4.0}, "1": {"train_s": 4.0}}},
        {"round": 2, "round_s": 4.0, "clients": {"0": {"train_s": 3.0}, "1": {"train_s": 5.0}}},
    ]
    total, per_round = _bench().overhead(rows, slots=2)
    assert per_round == [1.5, 1.0]
    assert total == pytest.approx(10.0 / 8.0)
    assert _bench().overhead(rows, slots=1)[0] == pytest.approx(10.0 / 16.0)


def test_setup_share_is_the_clients_setup_per_slot_over_the_round_wall():
    rows = [
        {"round": 0},
        {"round": 1, "round_s": 10.0, "clients": {"0": {"train_s": 1.0, "setup_s": 6.0}, "1": {"setup_s": 2.0}}},
        {"round": 2, "round_s": 4.0, "clients": {"0": {"train_s": 1.0}}},
    ]
    assert _bench().setup_share(rows, slots=2) == [0.4, None]


def test_quick_mode_measures_every_case(tmp_path):
    out = tmp_path / "scale.json"
    assert _bench().main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["quick"] is True and [c["num_clients"] for c in result["cases"]] == [2, 4]
    for case in result["cases"]:
        assert case["peak_rss_gib"] > 0 and case["overhead"] > 0 and len(case["round_s"]) == case["rounds"] == 1
        assert case["clients_per_round"] == 2
        assert len(case["setup_share_per_round"]) == 1 and 0 < case["setup_share_per_round"][0] < 1
        assert case["discovery_s"] > 0  # the Ray workers warm up during discovery
    assert result["peak_ratio_last_over_middle"] > 0

"""scripts/bench_gpu.py's CPU dry run: the GPU benchmark's own code path on a tiny cut of the
SD-1.5 UNet, so that a GPU run does not fail on its first use."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_gpu.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_measures_every_case_and_counts_flops(tmp_path):
    bench = _bench()
    out = tmp_path / "gpu.json"
    assert bench.main(["--dry-run", "--out", str(out), "--batches", "1", "2", "--steps", "1"]) == 0
    result = json.loads(out.read_text())
    assert result["dry_run"] is True and result["device"] == "cpu (dry run)"
    cases = {(c["method"], c["batch_size"], c["precision"]): c for c in result["cases"]}
    assert set(cases) == {(m, b, p) for m in ("lora", "smp-lora") for b in (1, 2) for p in ("fp32", "bf16")}
    for c in cases.values():
        assert c["steps_per_s"] > 0 and c["flops_per_step"] > 0 and c["peak_gpu_memory_gib"] is None
        assert c["fraction_of_bf16_peak"] is None  # no GPU, no peak to compare with
    # a step's FLOPs grow with the batch, and SMP-LoRA's (attacker maps, attacker steps) exceed LoRA's
    assert cases[("lora", 2, "fp32")]["flops_per_step"] > cases[("lora", 1, "fp32")]["flops_per_step"]
    assert cases[("smp-lora", 1, "fp32")]["flops_per_step"] > cases[("lora", 1, "fp32")]["flops_per_step"]
    assert cases[("smp-lora", 1, "fp32")]["smp_over_lora_step_time"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_without_a_gpu_nothing_is_measured_or_written(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert _bench().main(["--out", str(out)]) == 2
    assert not out.exists() and "no CUDA GPU" in capsys.readouterr().out


def test_bf16_peaks_are_looked_up_by_device_name():
    bench = _bench()
    assert bench.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.bf16_peak_tflops("Some Other GPU") is None

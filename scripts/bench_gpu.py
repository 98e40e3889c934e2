"""LoRA and SMP-LoRA step throughput, peak GPU memory and FLOPs on the SD-1.5-architecture UNet.

Each case is fedlora's own training loop (``fedlora.training.train_lora``) on the SD-1.5 UNet with
random weights (``fedlora.models.sd15``) at 512 px (64 x 64 latents) and random latents and
caption embeddings: the step's cost does not depend on the weights' values. SMP-LoRA's steps
include its proxy attacker's updates on aux loss maps. FLOPs per step are counted once per case
with ``torch.utils.flop_counter.FlopCounterMode``; the achieved fraction of the GPU's dense bf16
peak is FLOPs per step x steps per second / peak.

Usage:
  python scripts/bench_gpu.py [--out docs/measurements/gpu.json]   # needs a CUDA GPU
  python scripts/bench_gpu.py --dry-run --out /tmp/gpu.json        # a tiny CPU run of the same code
A run without a GPU and without --dry-run writes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch.utils.flop_counter import FlopCounterMode

from fedlora.config import ExperimentConfig, ModelConfig
from fedlora.evaluation.attacks.base import AttackSets, Samples
from fedlora.local_training import membership_batches
from fedlora.models.lora import attach_lora
from fedlora.models.sd15 import SD15_CROSS_ATTENTION, SD15_TEXT_TOKENS, SD15Spec, build_sd15_unet
from fedlora.privacy.objectives import LoraObjective, Objective, objective_class
from fedlora.runtime import ModelRuntime
from fedlora.training import train_lora

MixedPrecision = Literal["no", "fp16", "bf16"]
PRECISIONS: dict[str, MixedPrecision] = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
# Dense bf16 Tensor Core peaks from NVIDIA's data sheets, by a substring of the device name.
BF16_PEAK_TFLOPS = {"A100": 312.0, "H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4}
# The dry run exercises the benchmark's code on the CPU, not SD's cost: one layer per block, 64 px,
# and a UNet 10x narrower than SD-1.5's (same blocks, head dim and cross-attention width).
DRY_RUN_SPEC = SD15Spec(
    unet_layers_per_block=1, vae_layers_per_block=1, text_layers=1, sample_size=8, unet_channels=(32, 64, 128, 128)
)


def bf16_peak_tflops(name: str) -> float | None:
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in name:
            return BF16_PEAK_TFLOPS[key]
    return None


class BenchRuntime:
    """What ``train_lora`` and the SMP-LoRA objective use of a ModelRuntime: the UNet on a device."""

    def __init__(self, unet: Any, device: torch.device):
        from diffusers import DDPMScheduler

        self.unet, self.device = unet, device
        self.scheduler = DDPMScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
        )

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()


def _samples(n: int, side: int, gen: torch.Generator, device: torch.device) -> Samples:
    latents = torch.randn(n, 4, side, side, generator=gen).to(device)
    cond = torch.randn(n, SD15_TEXT_TOKENS, SD15_CROSS_ATTENTION, generator=gen).to(device)
    return Samples(latents, cond)


def _objective(cfg: ExperimentConfig, rt: BenchRuntime, side: int, gen: torch.Generator) -> Objective:
    if cfg.train.method == "lora":
        return LoraObjective()
    k = cfg.privacy.attacker_batch_size
    sets = AttackSets(*(_samples(k, side, gen, rt.device) for _ in range(4)))
    batches = membership_batches(cast(ModelRuntime, rt), sets, gen, cfg.privacy, cfg.train.mixed_precision)
    return objective_class(cfg.train.method).build(cfg, 4 * side * side, batches, seed=0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(
    rt: BenchRuntime, spec: SD15Spec, method: str, batch: int, precision: str, steps: int, warmup: int
) -> dict[str, Any]:
    cfg = ExperimentConfig()
    train = dataclasses.replace(
        cfg.train, method=method, batch_size=batch, local_steps=warmup, mixed_precision=PRECISIONS[precision]
    )
    cfg = dataclasses.replace(cfg, train=train)
    gen = torch.Generator().manual_seed(batch)
    side = spec.sample_size
    members = _samples(batch, side, gen, rt.device)
    objective = _objective(cfg, rt, side, gen)
    runtime = cast(ModelRuntime, rt)
    train_lora(runtime, members, train, objective, seed=1)  # warm-up: kernels, allocator, autotuning
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    _sync(rt.device)
    started = time.perf_counter()
    train_lora(runtime, members, dataclasses.replace(train, local_steps=steps), objective, seed=2)
    _sync(rt.device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(rt.device) / 2**30 if rt.device.type == "cuda" else None
    with FlopCounterMode(display=False) as counter:
        train_lora(runtime, members, dataclasses.replace(train, local_steps=1), objective, seed=3)
    flops = float(counter.get_total_flops())
    steps_per_s = steps / seconds
    return {
        "method": method,
        "batch_size": batch,
        "precision": precision,
        "steps": steps,
        "steps_per_s": steps_per_s,
        "peak_gpu_memory_gib": peak,
        "flops_per_step": flops,
        "achieved_tflops": flops * steps_per_s / 1e12,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="a tiny cut of the UNet on the CPU (the test's mode)")
    ap.add_argument("--out", default=None, help="JSON file (default docs/measurements/gpu.json on a GPU)")
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--precisions", nargs="+", choices=sorted(PRECISIONS), default=None)
    ap.add_argument("--methods", nargs="+", choices=["lora", "smp-lora"], default=["lora", "smp-lora"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--lora-rank", type=int, default=ModelConfig().lora_rank)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the table")
    args = ap.parse_args(argv)
    if args.dry_run:
        device, spec = torch.device("cpu"), DRY_RUN_SPEC
        batches, precisions = args.batches or [1, 2], args.precisions or ["fp32", "bf16"]
        steps, warmup, out = args.steps or 2, args.warmup or 1, args.out
    elif not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA GPU visible; nothing measured, nothing written (use --dry-run on a CPU)")
        return 2
    else:
        device, spec = torch.device("cuda"), SD15Spec()
        batches, precisions = args.batches or [1, 4, 8], args.precisions or ["fp32", "bf16", "fp16"]
        steps, warmup = args.steps or 20, args.warmup or 3
        out = args.out or "docs/measurements/gpu.json"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    peak_tflops = args.peak_tflops or (bf16_peak_tflops(name) if device.type == "cuda" else None)
    torch.manual_seed(0)
    unet = build_sd15_unet(spec)
    attach_lora(unet, dataclasses.replace(ModelConfig(), lora_rank=args.lora_rank, lora_alpha=float(args.lora_rank)))
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.to(device)
    rt = BenchRuntime(unet, device)
    rows = []
    for precision in precisions:
        for batch in batches:
            for method in args.methods:
                try:
                    row = run_case(rt, spec, method, batch, precision, steps, warmup)
                    row["fraction_of_bf16_peak"] = row["achieved_tflops"] / peak_tflops if peak_tflops else None
                except torch.OutOfMemoryError:  # recorded, and the other cases still run
                    row = {"method": method, "batch_size": batch, "precision": precision, "error": "out of memory"}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row))
    lora = {
        (r["batch_size"], r["precision"]): r["steps_per_s"] for r in rows if r["method"] == "lora" and "error" not in r
    }
    for r in rows:
        if r["method"] == "smp-lora" and "error" not in r and (r["batch_size"], r["precision"]) in lora:
            r["smp_over_lora_step_time"] = lora[(r["batch_size"], r["precision"])] / r["steps_per_s"]
    result = {
        "command": "python " + " ".join(sys.argv if argv is None else ["scripts/bench_gpu.py", *argv]),
        "dry_run": args.dry_run,
        "device": name,
        "bf16_peak_tflops": peak_tflops,
        "unet": dataclasses.asdict(spec),
        "resolution_px": spec.image_size,
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "lora_rank": args.lora_rank,
        "gradient_checkpointing": args.gradient_checkpointing,
        "torch": torch.__version__,
        "cases": rows,
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

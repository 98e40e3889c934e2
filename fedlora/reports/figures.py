"""The reports' figures: training curves and ROC curves of a run, the comparison's privacy-quality scatter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _client_series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Per round, the mean over the clients that reported ``key``."""
    xs, ys = [], []
    for r in rows:
        vals = [c[key] for c in r.get("clients", {}).values() if key in c]
        if vals:
            xs.append(r["round"])
            ys.append(float(np.mean(vals)))
    return xs, ys


def plot_training(path: str | Path, rows: list[dict]) -> None:
    """Global-model losses per round, each client's training loss, and the proxy attacker's accuracy if trained."""
    plt = _pyplot()
    has_attacker = any("attacker_acc" in c for r in rows for c in r.get("clients", {}).values())
    fig, axes = plt.subplots(1, 3 if has_attacker else 2, figsize=(15 if has_attacker else 10, 3.6))
    tracked = [r for r in rows if "member_loss" in r]  # a per-silo run's server has no data to track
    rounds = [r["round"] for r in tracked]
    axes[0].plot(rounds, [r["member_loss"] for r in tracked], "o-", label="members (global model)")
    axes[0].plot(rounds, [r["nonmember_loss"] for r in tracked], "s--", label="non-members (global model)")
    axes[0].set_xlabel("round")
    axes[0].set_ylabel("mean denoising loss")
    if tracked:
        axes[0].legend()
    else:
        axes[0].set_title("not tracked: the server holds no member data (per-silo run)")
    withheld = 0
    for r in rows:
        clients = list(r.get("clients", {}).values())
        losses = [c["train_loss"] for c in clients if "train_loss" in c]
        withheld += len(clients) - len(losses)
        axes[1].scatter([r["round"]] * len(losses), losses, s=10, color="tab:blue", alpha=0.6)
    axes[1].set_xlabel("round")
    axes[1].set_ylabel("client local training loss (objective)")
    # under a DP mode a client's reply withholds its losses (DpMode.released_metrics)
    note = f" ({withheld} replies withhold their loss)" if withheld else ""
    axes[1].set_title("each dot: one client's round" + note)
    if has_attacker:
        for key, label, style in (
            ("attacker_acc", "on its aux training batches", "o-"),
            ("attacker_test_acc", "on the client's D_te", "s--"),
        ):
            xs, ys = _client_series(rows, key)
            axes[2].plot(xs, ys, style, label=label)
        axes[2].axhline(0.5, color="grey", lw=0.8)
        axes[2].set_ylim(0, 1)
        axes[2].set_xlabel("round")
        axes[2].set_ylabel("proxy attacker accuracy (client mean)")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(path: str | Path, results: Mapping[str, Any]) -> None:
    """ROC curve per attack (``results``: name -> object with ``fpr``, ``tpr``, ``metrics['auc']``), linear and log."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, log in zip(axes, (False, True)):
        for name, r in results.items():
            ax.plot(r.fpr, r.tpr, label=f"{name} (AUC {r.metrics['auc']:.3f})")
        grid = np.logspace(-3, 0, 50) if log else np.linspace(0, 1, 50)
        ax.plot(grid, grid, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(1e-3, 1)
            ax.set_ylim(1e-3, 1)
            ax.set_title("log scale (low-FPR regime)")
        else:
            ax.set_title("global model, D_te")
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_privacy_quality(
    path: str | Path,
    points: Sequence[tuple[str, float, float, float | None]],
    *,
    metric: str,
    xlabel: str,
    n_runs: int,
    notes: Sequence[str],
) -> None:
    """One labelled point per run (name, quality x, leakage y, x error); ``notes`` name the runs left out."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, x, y, err in points:
        ax.errorbar([x], [y], xerr=None if err is None else [err], fmt="o", capsize=3)
        ax.annotate(
            name,
            (x, y),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
            bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.75, lw=0),
        )
    if not points:
        ax.text(
            0.5,
            0.5,
            f"no run has both {metric} and an attack on the global model",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("leakage: max |AUC−0.5|/0.5 over attacks (global model)")
    ax.set_title(f"privacy vs quality ({len(points)} of {n_runs} runs plotted; lower-left is better)")
    if notes:
        fig.text(0.01, 0.01, "not plotted: " + "; ".join(notes), fontsize=7, color="dimgrey", wrap=True)
    fig.tight_layout(rect=(0, 0.05 if notes else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)

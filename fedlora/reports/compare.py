"""Several finished runs side by side: one Markdown table and a privacy–quality scatter.

Only ``summary.json`` is read, so runs of any age compare; a number a run lacks is "—".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..outputs import COMPARISON_TABLE, PRIVACY_QUALITY_FIGURE
from .columns import COLUMN, auc_deviation, dp_guarantee, fmt
from .figures import plot_privacy_quality
from .summary import Metrics, RunSummary, load_summary
from .templating import render

CLIENT_ATTACK = "loss-threshold"  # the per-client column: cheap, present in every audited run
DASH = "—"
ASR, AUC_DEV = COLUMN["asr"].header, COLUMN["auc_dev"].header


@dataclass(frozen=True)
class ComparedRun:
    path: Path
    name: str
    summary: RunSummary


def _labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, widened with parent folders only where two runs would share a label."""
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(p.resolve().parts[-d:]) for p, d in zip(paths, depth)]
        clash = [
            i for i, lab in enumerate(labels) if labels.count(lab) > 1 and depth[i] < len(paths[i].resolve().parts)
        ]
        if not clash:
            return labels
        for i in clash:
            depth[i] += 1


def leakage(summary: RunSummary) -> float | None:
    """Max |AUC − 0.5| / 0.5 over the attacks on the global model (None without any)."""
    devs = [d for d in map(auc_deviation, summary.privacy.global_model.values()) if d is not None]
    return max(devs) if devs else None


def client_mean_asr(summary: RunSummary, attack: str = CLIENT_ATTACK) -> tuple[float | None, int]:
    """Mean ASR of ``attack`` over the client updates, and over how many clients."""
    found = (c[attack].number("asr") for c in summary.privacy.clients.values() if attack in c)
    vals = [v for v in found if v is not None]
    return (sum(vals) / len(vals), len(vals)) if vals else (None, 0)


def dp_cell(summary: RunSummary) -> str:
    dp = dp_guarantee(summary.privacy.dp)
    if not dp.active:
        return DASH
    if dp.heuristic or dp.epsilon is None:
        return f"{DASH} ({dp.mechanism}{', heuristic' if dp.heuristic else ''})"
    return f"{dp.epsilon:.2f} ({dp.mechanism})"


def quality_axis(runs: Sequence[ComparedRun]) -> tuple[str, str, dict[str, float], dict[str, float]]:
    """(metric name, axis label, x per run name, x error per run name): KID where it covers the most runs."""
    kid = {r.name: x for r in runs if (x := r.summary.quality.number("kid")) is not None}
    acc = {r.name: 1.0 - x for r in runs if (x := r.summary.quality.number("caption_accuracy")) is not None}
    if kid and len(kid) >= len(acc):
        err = {r.name: x for r in runs if r.name in kid and (x := r.summary.quality.number("kid_std")) is not None}
        return "KID", "KID (lower = closer to the member images)", kid, err
    return "caption accuracy", "1 − caption-probe accuracy (no KID for these runs; lower = better)", acc, {}


def _row(run: ComparedRun, attacks: list[str]) -> list[str]:
    s, q = run.summary, run.summary.quality
    kid, kid_std = fmt(q.number("kid"), ".4f", DASH), q.number("kid_std")
    if kid != DASH and kid_std is not None:
        kid += f" ± {kid_std:.4f}"
    row = [
        run.name,
        *(DASH if v is None else str(v) for v in (s.method, s.aggregation, s.num_clients, s.rounds)),
        dp_cell(s),
        kid,
        fmt(q.number("fid"), ".2f", DASH),
        fmt(q.number("caption_accuracy"), ".3f", DASH),
    ]
    for a in attacks:
        m = s.privacy.global_model.get(a, Metrics())
        row += [fmt(m.number("asr"), ".3f", DASH), fmt(auc_deviation(m), ".3f", DASH)]
    mean, n = client_mean_asr(s)
    return row + [fmt(leakage(s), ".3f", DASH), DASH if mean is None else f"{mean:.3f} (n={n})"]


def _plot(runs: Sequence[ComparedRun], path: Path) -> list[str]:
    """Draw the scatter; returns notes on runs that could not be placed."""
    metric, xlabel, xs, xerr = quality_axis(runs)
    notes, points = [], []
    for r in runs:
        y = leakage(r.summary)
        if r.name in xs and y is not None:
            points.append((r.name, xs[r.name], y, xerr.get(r.name)))
        else:
            missing = [
                what for what, ok in ((metric, r.name in xs), ("attack on the global model", y is not None)) if not ok
            ]
            notes.append(f"{r.name}: no {' and no '.join(missing)}")
    plot_privacy_quality(path, points, metric=metric, xlabel=xlabel, n_runs=len(runs), notes=notes)
    return notes


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.md`` and ``privacy_quality.png`` into ``out_dir``; every run must have a summary."""
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run folder")
    paths = [Path(d) for d in run_dirs]
    summaries = [load_summary(p) for p in paths]  # fail on a bad folder before writing anything
    runs = [ComparedRun(p, n, s) for p, n, s in zip(paths, _labels(paths), summaries)]
    attacks: list[str] = []
    for r in runs:
        attacks += [a for a in r.summary.privacy.global_model if a not in attacks]
    header = ["run", "method", "aggregation", "clients", "rounds", "DP ε", "KID", "FID", "caption acc."]
    header += [h for a in attacks for h in (f"{a} {ASR}", f"{a} {AUC_DEV}")]
    header += [f"max {AUC_DEV}", f"client {CLIENT_ATTACK} {ASR} (mean)"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure_path, table_path = out / PRIVACY_QUALITY_FIGURE, out / COMPARISON_TABLE
    notes = _plot(runs, figure_path)
    metric, xlabel, _, _ = quality_axis(runs)
    table_path.write_text(
        render(
            "comparison.md.j2",
            runs=runs,
            header=header,
            rows=[_row(r, attacks) for r in runs],
            client_attack=CLIENT_ATTACK,
            metric=metric,
            xlabel=xlabel,
            notes=notes,
        )
    )
    return table_path, figure_path

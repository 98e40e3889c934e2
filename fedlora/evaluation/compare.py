"""Several finished runs side by side: one Markdown table and a privacy–quality scatter.

Only ``summary.json`` is read, so runs of any age compare; a number a run lacks is "—".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..outputs import COMPARISON_TABLE, PRIVACY_QUALITY_FIGURE, SUMMARY_FILE
from .html_report import as_number, auc_deviation

CLIENT_ATTACK = "loss-threshold"  # the per-client column: cheap, present in every audited run
DASH = "—"


@dataclass
class RunSummary:
    path: Path
    name: str
    summary: dict


def load_summary(run_dir: str | Path) -> dict:
    """The run's summary.json; the error names the folder, not just the file."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {SUMMARY_FILE} (not a finished run folder?)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{run_dir}: {SUMMARY_FILE} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{run_dir}: {SUMMARY_FILE} does not hold a JSON object")
    return data


def _labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, widened with parent folders only where two runs would share a label."""
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(p.resolve().parts[-d:]) for p, d in zip(paths, depth)]
        clash = [i for i, lab in enumerate(labels)
                 if labels.count(lab) > 1 and depth[i] < len(paths[i].resolve().parts)]
        if not clash:
            return labels
        for i in clash:
            depth[i] += 1


def _section(summary: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    node: Any = summary
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def global_attacks(summary: Mapping[str, Any]) -> Mapping[str, Any]:
    return {k: v for k, v in _section(summary, "privacy", "global").items() if isinstance(v, Mapping)}


def leakage(summary: Mapping[str, Any]) -> float | None:
    """Max |AUC − 0.5| / 0.5 over the attacks on the global model (None without any)."""
    devs = [auc_deviation(m) for m in global_attacks(summary).values()]
    devs = [d for d in devs if d is not None]
    return max(devs) if devs else None


def client_mean_asr(summary: Mapping[str, Any], attack: str = CLIENT_ATTACK) -> tuple[float | None, int]:
    """Mean ASR of ``attack`` over the client updates, and over how many clients."""
    vals = [as_number(_section(c, attack).get("asr")) for c in _section(summary, "privacy", "clients").values()
            if isinstance(c, Mapping)]
    vals = [v for v in vals if v is not None]
    return (sum(vals) / len(vals), len(vals)) if vals else (None, 0)


def dp_cell(summary: Mapping[str, Any]) -> str:
    dp = _section(summary, "privacy", "dp")
    mech = dp.get("mechanism")
    if not dp or mech in (None, "none"):
        return DASH
    eps = as_number(dp.get("epsilon"))
    if dp.get("formal") is False or eps is None:
        return f"{DASH} ({mech}{', heuristic' if dp.get('formal') is False else ''})"
    return f"{eps:.2f} ({mech})"


def _num(value: Any, spec: str) -> str:
    x = as_number(value)
    return DASH if x is None else format(x, spec)


def _md(text: Any) -> str:
    """A Markdown table cell: pipes escaped so they do not split the cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def quality_axis(runs: Sequence[RunSummary]) -> tuple[str, str, dict[str, float], dict[str, float]]:
    """(metric name, axis label, x per run name, x error per run name): KID where it covers the most runs."""
    kid = {r.name: as_number(_section(r.summary, "quality").get("kid")) for r in runs}
    kid = {k: v for k, v in kid.items() if v is not None}
    acc = {r.name: as_number(_section(r.summary, "quality").get("caption_accuracy")) for r in runs}
    acc = {k: 1.0 - v for k, v in acc.items() if v is not None}
    if kid and len(kid) >= len(acc):
        err = {r.name: as_number(_section(r.summary, "quality").get("kid_std")) for r in runs if r.name in kid}
        return "KID", "KID (lower = closer to the member images)", kid, {k: v for k, v in err.items() if v is not None}
    return ("caption accuracy", "1 − caption-probe accuracy (no KID for these runs; lower = better)", acc, {})


def _table(runs: Sequence[RunSummary], attacks: list[str]) -> list[str]:
    header = ["run", "method", "aggregation", "clients", "rounds", "DP ε", "KID", "FID", "caption acc."]
    for a in attacks:
        header += [f"{a} ASR", f"{a} |AUC−0.5|/0.5"]
    header += ["max |AUC−0.5|/0.5", f"client {CLIENT_ATTACK} ASR (mean)"]
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    for r in runs:
        s, q = r.summary, _section(r.summary, "quality")
        kid = _num(q.get("kid"), ".4f")
        if kid != DASH and as_number(q.get("kid_std")) is not None:
            kid += f" ± {q['kid_std']:.4f}"
        row = [r.name, s.get("method", DASH), s.get("aggregation", DASH), s.get("num_clients", DASH),
               s.get("rounds", DASH), dp_cell(s), kid, _num(q.get("fid"), ".2f"),
               _num(q.get("caption_accuracy"), ".3f")]
        glob = global_attacks(s)
        for a in attacks:
            m = glob.get(a, {})
            dev = auc_deviation(m) if m else None
            row += [_num(m.get("asr"), ".3f"), _num(dev, ".3f")]
        mean, n = client_mean_asr(s)
        row += [_num(leakage(s), ".3f"), DASH if mean is None else f"{mean:.3f} (n={n})"]
        lines.append("| " + " | ".join(_md(c) for c in row) + " |")
    return lines


def _figure(runs: Sequence[RunSummary], path: Path) -> list[str]:
    """Draw the scatter; returns notes on runs that could not be placed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, xlabel, xs, xerr = quality_axis(runs)
    notes, points = [], []
    for r in runs:
        y = leakage(r.summary)
        missing = [what for what, ok in ((metric, r.name in xs), ("attack on the global model", y is not None))
                   if not ok]
        if missing:
            notes.append(f"{r.name}: no {' and no '.join(missing)}")
        else:
            points.append((r.name, xs[r.name], y, xerr.get(r.name)))
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, x, y, err in points:
        ax.errorbar([x], [y], xerr=None if err is None else [err], fmt="o", capsize=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.75, lw=0))
    if not points:
        ax.text(0.5, 0.5, f"no run has both {metric} and an attack on the global model",
                ha="center", va="center", transform=ax.transAxes)
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("leakage: max |AUC−0.5|/0.5 over attacks (global model)")
    ax.set_title(f"privacy vs quality ({len(points)} of {len(runs)} runs plotted; lower-left is better)")
    if notes:
        fig.text(0.01, 0.01, "not plotted: " + "; ".join(notes), fontsize=7, color="dimgrey", wrap=True)
    fig.tight_layout(rect=(0, 0.05 if notes else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return notes


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.md`` and ``privacy_quality.png`` into ``out_dir``; every run must have a summary."""
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run folder")
    paths = [Path(d) for d in run_dirs]
    summaries = [load_summary(p) for p in paths]  # fail on a bad folder before writing anything
    runs = [RunSummary(p, n, s) for p, n, s in zip(paths, _labels(paths), summaries)]
    attacks: list[str] = []
    for r in runs:
        attacks += [a for a in global_attacks(r.summary) if a not in attacks]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure_path, table_path = out / PRIVACY_QUALITY_FIGURE, out / COMPARISON_TABLE
    notes = _figure(runs, figure_path)
    key, xlabel, _, _ = quality_axis(runs)

    lines = [
        f"# Comparison of {len(runs)} runs",
        "",
        *_table(runs, attacks),
        "",
        "ASR and |AUC−0.5|/0.5 are for attacks on the final global model (D_te); the last column is the mean "
        f"`{CLIENT_ATTACK}` ASR over the clients' last updates, each attacked with that client's own sets. "
        "DP ε: the formal guarantee where the run has one, — otherwise (a heuristic mechanism says so).",
        "",
        f"![privacy vs quality]({PRIVACY_QUALITY_FIGURE})",
        "",
        f"Figure: x = {xlabel}{' ± KID std' if key == 'KID' else ''}; y = the largest |AUC−0.5|/0.5 over the "
        "attacks on the global model.",
    ]
    if notes:
        lines += ["", "Not plotted: " + "; ".join(notes) + "."]
    lines += ["", "Runs:", "", *[f"- `{r.name}`: `{r.path}`" for r in runs], ""]
    table_path.write_text("\n".join(lines))
    return table_path, figure_path

"""What the leakage numbers look like, defined once for report.md, report.html and comparison.md.

The leakage columns (key, header, number format), the number helpers, the rule that a TPR at an
FPR the non-members cannot resolve is "n/m" rather than a number, the legend, the attack notes
(from the attack registry) and the DP guarantee line. Each report only lays these out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..evaluation.leakage import AUX_FPRS, LOW_FPRS, REALISED_FPR
from ..registry import ATTACKS, Entry
from .summary import Metrics, Privacy, as_number


@dataclass(frozen=True)
class Column:
    key: str  # the key in an attack's metrics
    header: str
    spec: str  # format spec; "d" for counts (summed, not averaged, over clients)


LEAKAGE_COLUMNS = (
    Column("asr", "ASR", ".3f"),
    Column("auc", "AUC", ".3f"),
    Column("auc_dev", "|AUC−0.5|/0.5", ".3f"),
    Column("tpr_at_5pct_fpr", "TPR@5%FPR test ROC", ".3f"),
    Column("tpr_at_5pct_fpr_aux", "TPR@5%FPR aux thr.", ".3f"),
    Column("tpr_at_1pct_fpr", "TPR@1%FPR test ROC", ".3f"),
    Column("tpr_at_1pct_fpr_aux", "TPR@1%FPR aux thr.", ".3f"),
    Column("tpr_at_0.1pct_fpr", "TPR@0.1%FPR test ROC", ".3f"),
    Column("tpr_at_0.1pct_fpr_aux", "TPR@0.1%FPR aux thr.", ".3f"),
    Column("n_members", "members", "d"),
    Column("n_nonmembers", "non-members", "d"),
)
COLUMN = {c.key: c for c in LEAKAGE_COLUMNS}

LEGEND = (
    "ASR: accuracy at the attack's chosen threshold. |AUC−0.5|/0.5 counts an inverted signal as leakage too. "
    "TPR at a fixed FPR, test ROC: the largest TPR on the test ROC curve whose FPR does not exceed it (an oracle's "
    "threshold, set by the test non-members); aux thr.: the TPR on D_te at the threshold where the aux "
    "non-members' FPR is that value, with the FPR it really has on D_te in small print (what an attacker gets). "
    "AUC brackets, where recorded: confidence interval."
)
NOT_MEASURABLE = "with n non-members the smallest non-zero FPR is 1/n, so TPR at FPR x needs n ≥ 1/x non-members"


def fmt(value: Any, spec: str = ".3f", missing: str = "n/a") -> str:
    """A number for a table cell; ``missing`` for None and non-finite numbers, other values as text."""
    x = as_number(value)
    if x is None:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return missing if value is None or number else str(value)
    return str(int(round(x))) if spec == "d" else format(x, spec)


def auc_deviation(metrics: Metrics) -> float | None:
    """|AUC − 0.5| / 0.5, recomputed from the AUC when the summary lacks it."""
    dev = metrics.number("auc_dev")
    if dev is not None:
        return dev
    auc = metrics.number("auc")
    return None if auc is None else abs(auc - 0.5) / 0.5


def by_client_id(ids: Iterable[str]) -> list[str]:
    """Client ids in numeric order (0, 1, ..., 10), anything else after them."""
    return sorted(ids, key=lambda c: (not str(c).isdigit(), int(c) if str(c).isdigit() else 0, str(c)))


def attack_message(metrics: Metrics) -> str | None:
    """An attack-level explanation (failed, skipped) when the summary gives one."""
    for key in ("error", "skipped", "reason", "note"):
        if metrics.get(key):
            return str(metrics[key])
    return None


def _resolution(key: str) -> tuple[str, float] | None:
    """(the count that must resolve the FPR, the FPR) of a low-FPR key; None for other keys."""
    if key in LOW_FPRS:
        return "n_nonmembers", LOW_FPRS[key]
    if key in AUX_FPRS:
        return "n_aux_nonmembers", AUX_FPRS[key]
    return None


def unresolvable(metrics: Metrics, key: str) -> bool:
    """A TPR at an FPR the (aux) non-members cannot resolve: reported as "n/m" (not measurable)."""
    resolution = _resolution(key)
    if resolution is None or key not in metrics or metrics.number(key) is not None:
        return False
    n = metrics.number(resolution[0])
    if n is None:
        return key in LOW_FPRS and key in metrics.block("unmeasurable")
    return n < round(1 / resolution[1])


def missing_reason(metrics: Metrics, key: str) -> str:
    """Why a leakage number is missing: the summary's own words if it has any."""
    for source in (metrics, metrics.block("details")):
        for k in (f"{key}_reason", f"{key}_note"):
            if source.get(k):
                return str(source[k])
        for k in ("unmeasurable", "reasons", "notes"):
            if source.block(k).get(key):
                return str(source.block(k)[key])
    if key not in metrics:
        return "not recorded in this run"
    resolution = _resolution(key)
    if resolution is not None and unresolvable(metrics, key):
        n = metrics.number(resolution[0])
        who = "aux non-members" if key in AUX_FPRS else "non-members"
        if n is not None:
            return f"needs ≥ {round(1 / resolution[1])} {who}, has {int(n)}"
    return attack_message(metrics) or "not measurable"


def details_text(metrics: Metrics) -> str:
    """The attack's own choices (threshold, epoch, ...) in one short line."""
    parts = []
    for k, v in metrics.block("details").items():
        x = as_number(v)
        text = format(x, ".4g") if x is not None else str(v)
        parts.append(f"{k} {text if len(text) <= 60 else text[:57] + '...'}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Cell:
    """One table cell: a formatted value (None when missing) with small print after it, or why it is missing."""

    value: str | None
    note: str = ""
    why: str = ""  # empty where the legend says it once (a column no entry records, a client mean)
    unmeasurable: bool = False  # a TPR the non-members cannot resolve


@dataclass(frozen=True)
class LeakageRow:
    target: str  # "global", "client 3", "all clients"
    attack: str
    cells: tuple[Cell, ...]  # one per LEAKAGE_COLUMNS
    details: str = ""
    error: str | None = None  # the attack failed or was skipped: no numbers
    mean: bool = False  # the mean over the clients


@dataclass(frozen=True)
class LeakageTable:
    global_rows: tuple[LeakageRow, ...]
    client_rows: tuple[LeakageRow, ...]  # each client's attacks, then one mean row per attack
    unrecorded: tuple[Column, ...]  # columns no entry has at all (an older summary)
    notes: tuple[Entry, ...]  # registry entries of the attacks in the table, unknown names left out
    # per-silo runs: the global model as each silo attacked it on its own sets, then a mean row per attack
    silo_rows: tuple[LeakageRow, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.global_rows and not self.client_rows and not self.silo_rows


def _cell(metrics: Metrics, column: Column, unrecorded: tuple[Column, ...]) -> Cell:
    value = auc_deviation(metrics) if column.key == "auc_dev" else metrics.number(column.key)
    if value is None:
        if column in unrecorded:
            return Cell(None)
        return Cell(None, why=missing_reason(metrics, column.key), unmeasurable=unresolvable(metrics, column.key))
    note = ""
    if column.key == "auc":
        lo, hi = metrics.number("auc_ci_low"), metrics.number("auc_ci_high")
        note = "" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"
    elif column.key in REALISED_FPR and metrics.number(REALISED_FPR[column.key]) is not None:
        note = f"FPR {metrics.number(REALISED_FPR[column.key]):.3f}"
    return Cell(fmt(value, column.spec), note)


def _row(target: str, attack: str, metrics: Metrics, unrecorded: tuple[Column, ...]) -> LeakageRow:
    message = attack_message(metrics)
    if message and metrics.number("auc") is None and metrics.number("asr") is None:
        cells = (Cell(None, why=message),) + (Cell(None),) * (len(LEAKAGE_COLUMNS) - 1)
        return LeakageRow(target, attack, cells, details_text(metrics), error=message)
    return LeakageRow(
        target, attack, tuple(_cell(metrics, c, unrecorded) for c in LEAKAGE_COLUMNS), details_text(metrics)
    )


def _mean_row(attack: str, entries: list[Metrics], one: str = "client") -> LeakageRow:
    cells = []
    for column in LEAKAGE_COLUMNS:
        found = (auc_deviation(m) if column.key == "auc_dev" else m.number(column.key) for m in entries)
        vals = [v for v in found if v is not None]
        if not vals:
            unmeasurable = all(unresolvable(m, column.key) for m in entries)
            cells.append(
                Cell(None, why=f"not measurable for any {one}" if unmeasurable else "", unmeasurable=unmeasurable)
            )
        elif column.spec == "d":
            cells.append(Cell(fmt(sum(vals), "d")))
        else:  # "(k)": only k of the clients had this number
            cells.append(
                Cell(fmt(sum(vals) / len(vals), column.spec), f"({len(vals)})" if len(vals) != len(entries) else "")
            )
    return LeakageRow(f"all {one}s", attack, tuple(cells), f"mean over {len(entries)} {one}s (n summed)", mean=True)


def attack_notes(names: Iterable[str]) -> tuple[Entry, ...]:
    """The registry's description and reference of each named attack; names it does not know have none."""
    known = {e.key: e for e in ATTACKS.entries()}
    return tuple(known[n] for n in names if n in known)


def _per_party_rows(
    parties: dict[str, dict[str, Metrics]], names: list[str], unrecorded: tuple[Column, ...], who: str
) -> list[LeakageRow]:
    ids = by_client_id(parties)
    rows = [_row(f"{who} {c}", a, m, unrecorded) for c in ids for a, m in parties[c].items()]
    for a in names:
        each = [parties[c][a] for c in ids if a in parties[c]]
        if each:
            rows.append(_mean_row(a, each, who))
    return rows


def leakage_table(privacy: Privacy) -> LeakageTable:
    clients = by_client_id(privacy.clients)
    entries = [
        *privacy.global_model.values(),
        *(m for c in clients for m in privacy.clients[c].values()),
        *(m for attacks in privacy.silos.values() for m in attacks.values()),
    ]
    unrecorded = tuple(
        c for c in LEAKAGE_COLUMNS if entries and c.key != "auc_dev" and not any(c.key in m for m in entries)
    )
    names = privacy.attack_names()
    return LeakageTable(
        tuple(_row("global", a, m, unrecorded) for a, m in privacy.global_model.items()),
        tuple(_per_party_rows(privacy.clients, names, unrecorded, "client")),
        unrecorded,
        attack_notes(names),
        tuple(_per_party_rows(privacy.silos, names, unrecorded, "silo")),
    )


@dataclass(frozen=True)
class DpGuarantee:
    """What summary.json says about differential privacy."""

    recorded: bool  # False: no DP block (a run from before DP reporting)
    mechanism: str = "none"
    epsilon: float | None = None
    delta: float | None = None
    heuristic: bool = False  # the mechanism reports no formal guarantee
    note: str = ""
    params: tuple[tuple[str, str], ...] = ()  # the mechanism's other settings, formatted
    per_client: tuple[tuple[str, str], ...] = ()  # ("client k", ε after its last round)

    @property
    def active(self) -> bool:
        return self.recorded and self.mechanism != "none"

    @property
    def guarantee(self) -> str:
        if self.heuristic:
            return "heuristic, no ε"
        if self.epsilon is not None:
            return f"(ε = {self.epsilon:.3f}, δ = {fmt(self.delta, '.1e')})"
        return "ε n/a"


_DP_SHOWN = {"mechanism", "epsilon", "delta", "formal", "note", "epsilon_per_client"}


def dp_guarantee(dp: Metrics | None) -> DpGuarantee:
    if dp is None:
        return DpGuarantee(recorded=False)
    mechanism = dp.get("mechanism", "unknown")
    return DpGuarantee(
        recorded=True,
        mechanism="none" if mechanism is None else str(mechanism),
        epsilon=dp.number("epsilon"),
        delta=dp.number("delta"),
        heuristic=dp.get("formal") is False,
        note=str(dp.get("note") or ""),
        params=tuple((str(k), fmt(v, ".4g")) for k, v in dp.items() if k not in _DP_SHOWN),
        per_client=tuple((f"client {c}", fmt(v, ".3f")) for c, v in dp.block("epsilon_per_client").items()),
    )

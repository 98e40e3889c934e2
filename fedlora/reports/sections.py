"""The report sections both report.md and report.html show, as plain tables built from the run folder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .columns import Cell, DpGuarantee, LeakageTable, by_client_id, dp_guarantee, fmt, leakage_table
from .folder import RunFolder
from .summary import Failures, Metrics, as_number


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str | Cell, ...], ...]
    total: bool = False  # the last row sums the others


SPLIT_COLUMNS = (
    ("members", "members"),
    ("member_aux", "member aux"),
    ("member_test", "member test"),
    ("nonmember_aux", "non-member aux"),
    ("nonmember_test", "non-member test"),
)


@dataclass(frozen=True)
class SplitSizes:
    public: int | None  # the public (base pretraining) split
    facts: tuple[tuple[str, Any], ...]  # dataset, seed, public_seed where splits.json records them
    table: Table | None  # per client and all clients; None when splits.json lists no clients


def _count(value: Any) -> int | None:
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    x = as_number(value)
    return None if x is None else int(x)


def split_sizes(splits: Mapping[str, Any]) -> SplitSizes:
    """Sizes from splits.json as ``RunFolder`` reads it; sets this version does not know get a column too."""
    clients = splits["clients"]
    labels: dict[str, str] = dict(SPLIT_COLUMNS)
    extra = sorted({k for c in clients.values() for k in c} - set(labels))
    keys = [k for k in labels if any(k in c for c in clients.values())] + extra
    rows, totals = [], {k: 0 for k in keys}
    for cid in by_client_id(clients):
        counts = [_count(clients[cid].get(k)) for k in keys]
        rows.append((f"client {cid}", *("—" if n is None else str(n) for n in counts)))
        for k, n in zip(keys, counts):
            totals[k] += n or 0
    table = None
    if rows:
        rows.append(("all clients", *(str(totals[k]) for k in keys)))
        header: tuple[str, ...] = ("client", *(labels[k] if k in labels else str(k) for k in keys))
        table = Table(header, tuple(rows), total=True)
    facts = tuple((k, splits[k]) for k in ("dataset", "seed", "public_seed") if k in splits)
    return SplitSizes(_count(splits.get("public")), facts, table)


SHOWN_SKIPPED = 20  # file names a report lists; summary.json keeps every one


@dataclass(frozen=True)
class SkippedImages:
    """The images the data loader left out (``data.on_bad_image = "skip"``), as a report lists them."""

    count: int
    shown: tuple[str, ...]  # the first SHOWN_SKIPPED names
    more: int  # how many more there are (all in summary.json)


def skipped_images(block: Metrics | None) -> SkippedImages | None:
    """None: the run did not skip bad images (or is from before they were counted)."""
    if block is None:
        return None
    raw = block.get("files")
    files = [str(f) for f in raw] if isinstance(raw, list) else []
    count = block.number("count")
    total = len(files) if count is None else int(count)
    shown = tuple(files[:SHOWN_SKIPPED])
    return SkippedImages(total, shown, max(0, total - len(shown)))


def round_epsilon(row: Mapping[str, Any]) -> float | None:
    """The round's ε: the server's (central DP), else the largest client's (local DP)."""
    eps = as_number(row.get("dp_epsilon"))
    if eps is not None:
        return eps
    found = (as_number(c.get("dp_epsilon")) for c in (row.get("clients") or {}).values() if isinstance(c, Mapping))
    vals = [v for v in found if v is not None]
    return max(vals) if vals else None


def _clients_cell(row: Mapping[str, Any]) -> str:
    """The clients whose update was aggregated, and what happened to the others."""
    notes = [
        f"{len(row[key])} {label}" for key, label in (("failures", "failed"), ("rejected", "rejected")) if row.get(key)
    ]
    notes += ["skipped"] if row.get("skipped") else []
    return str(len(row.get("clients") or {})) + (f" ({', '.join(notes)})" if notes else "")


def round_table(rows: list[dict[str, Any]]) -> Table:
    """One row per metrics.jsonl line; the DP ε column only when some round has one."""
    has_eps = any(round_epsilon(r) is not None for r in rows)
    has_auc = any("round_calibrated_auc" in r for r in rows)
    header: tuple[str, ...] = (
        "round",
        "member loss",
        "non-member loss",
        "gap",
        "clients",
        "bytes up / client",
        "round s",
    )
    body = []
    for r in rows:
        line: tuple[str, ...] = (
            str(r.get("round", "?")),
            fmt(r.get("member_loss"), ".4f"),
            fmt(r.get("nonmember_loss"), ".4f"),
            fmt(r.get("loss_gap"), "+.4f"),
            _clients_cell(r),
            fmt(r.get("bytes_up_per_client"), ",.0f") if "bytes_up_per_client" in r else "—",
            fmt(r.get("round_s"), ".1f") if "round_s" in r else "—",
        )
        line += (fmt(r.get("round_calibrated_auc"), ".2f"),) if has_auc else ()
        body.append(line + ((fmt(round_epsilon(r), ".3f"),) if has_eps else ()))
    header += ("model AUC (calibrated loss)",) if has_auc else ()
    return Table(header + (("DP ε",) if has_eps else ()), tuple(body))


CAPTION_ROWS = (
    ("caption_accuracy_real_members", "caption-probe accuracy, real member images"),
    ("caption_accuracy_base", "caption-probe accuracy, base model samples"),
    ("caption_accuracy", "caption-probe accuracy, final global model samples"),
)
KID_FID_KEYS = {
    "kid",
    "kid_std",
    "fid",
    "kid_fid_n_generated",
    "kid_fid_n_reference",
    "kid_subset_size",
    "kid_heldout",
    "kid_heldout_std",
}


def quality_table(q: Metrics) -> Table:
    """Caption-probe accuracies, KID and FID with their sample sizes, then any other recorded metric."""
    rows, used = [], set()
    if "caption_accuracy" in q:
        n = fmt(q.get("caption_accuracy_n"), "d")
        rows += [(label, fmt(q[key], ".3f"), f"{n} captions") for key, label in CAPTION_ROWS if key in q]
        used |= {key for key, _ in CAPTION_ROWS} | {"caption_accuracy_n"}
    if "kid" in q or "fid" in q:
        n_text = (
            f"{fmt(q.get('kid_fid_n_generated'), 'd')} generated vs "
            f"{fmt(q.get('kid_fid_n_reference'), 'd')} member images"
        )
        sub = f", subsets of {fmt(q.get('kid_subset_size'), 'd')}" if "kid_subset_size" in q else ""
        if "kid" in q:
            kid = fmt(q.get("kid"), ".4f") + (f" ± {fmt(q.get('kid_std'), '.4f')}" if "kid_std" in q else "")
            rows.append(("KID (Inception, 2048-d)", kid, n_text + sub))
        if "kid_heldout" in q:
            held = fmt(q.get("kid_heldout"), ".4f")
            held += f" ± {fmt(q.get('kid_heldout_std'), '.4f')}" if "kid_heldout_std" in q else ""
            rows.append(
                ("KID against held-out non-members", held, n_text.replace("member images", "non-member images"))
            )
        if "fid" in q:
            rows.append(("FID (biased at small N: compare equal N only)", fmt(q.get("fid"), ".2f"), n_text))
        used |= KID_FID_KEYS
    rows += [(key, fmt(value, ".4g"), "") for key, value in q.items() if key not in used]
    return Table(("metric", "value", "n"), tuple(rows))


@dataclass(frozen=True)
class SecureAggregation:
    """What summary.json's ``secure_aggregation`` says: who saw what, the protocol's settings and events."""

    sees: str
    does_not_see: str
    client_audit: str
    facts: tuple[tuple[str, str], ...]


def secure_aggregation(block: Metrics | None) -> SecureAggregation | None:
    if not block or not block.get("enabled"):
        return None
    error = block.number("max_abs_error")
    facts = (
        ("protocol", str(block.get("protocol", "SecAgg+"))),
        (
            "shares / reconstruction threshold per round",
            f"{block.get('shares_per_round')} / {block.get('threshold_per_round')}",
        ),
        (
            "clipping range, quantization levels",
            f"±{fmt(block.number('clipping_range'), 'g')}, {fmt(block.number('quantization_range'), ',.0f')}",
        ),
        ("largest client weight (maps to ratio 1)", fmt(block.number("max_weight"), "g")),
        ("error bound on the aggregate (one level / mean ratio)", fmt(block.number("error_bound"), ".2e")),
        ("measured max |aggregate − weighted mean|", "not measured (no oracle)" if error is None else f"{error:.2e}"),
        ("values clipped by the quantizer", fmt(block.number("clipped_values"), ",.0f")),
        ("dropouts reconstructed around", fmt(block.number("dropouts"), "d")),
        (
            "rounds skipped (too few clients for the threshold)",
            ", ".join(map(str, block.get("rounds_skipped") or [])) or "none",
        ),
    )
    return SecureAggregation(
        sees=str(block.get("server_sees", "")),
        does_not_see=str(block.get("server_does_not_see", "")),
        client_audit=str(block.get("client_audit", "")),
        facts=facts,
    )


@dataclass(frozen=True)
class FailureSummary:
    """summary.json's ``failures``: one line of totals and a count per plain reason."""

    line: str
    reasons: tuple[tuple[str, int], ...]


def _counted(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def failure_summary(f: Failures | None) -> FailureSummary | None:
    if f is None:
        return None
    if not f.occurred:
        return FailureSummary("none: every sampled client answered and every update was accepted", ())
    line = ", ".join(
        (
            _counted(f.failed_replies, "failed reply", "failed replies"),
            _counted(f.rejected_updates, "rejected update", "rejected updates"),
            _counted(f.skipped_rounds, "skipped round", "skipped rounds"),
        )
    )
    reasons = tuple((str(k), int(v)) for k, v in f.reasons.items() if isinstance(v, (int, float)))
    return FailureSummary(line, reasons)


@dataclass(frozen=True)
class Sections:
    """What both reports show of a run folder; None where the file it comes from is missing or unreadable."""

    verdict: tuple[str, ...]  # one sentence per audited view (none for runs from before the verdict)
    splits: SplitSizes | None
    rounds: Table | None  # no rows: metrics.jsonl holds no rounds
    leakage: LeakageTable | None
    quality: Table | None
    dp: DpGuarantee | None
    secure: SecureAggregation | None = None  # None: the server saw every update
    failures: FailureSummary | None = None  # None: a run from before failures were totalled
    skipped: SkippedImages | None = None  # None: bad images were not being skipped

    @classmethod
    def of(cls, folder: RunFolder) -> Sections:
        s = folder.summary
        secure = None if s is None else secure_aggregation(s.secure_aggregation)
        return cls(
            verdict=()
            if s is None or s.privacy.verdict is None
            else verdict_sentences(s.privacy.verdict, secure is not None),
            splits=None if folder.splits is None else split_sizes(folder.splits),
            rounds=None if folder.metrics is None else round_table(folder.metrics),
            leakage=None if s is None else leakage_table(s.privacy),
            quality=None if s is None else quality_table(s.quality),
            dp=None if s is None else dp_guarantee(s.privacy.dp),
            secure=secure,
            failures=None if s is None else failure_summary(s.failures),
            skipped=None if s is None else skipped_images(s.skipped_images),
        )


def _interval(v: Metrics, key: str) -> str:
    low, high = (as_number(x) for x in (v.get(key) or [None, None]))
    return "[n/a]" if low is None or high is None else f"[{low:.2f}, {high:.2f}]"


def _global_sentence(v: Metrics) -> str:
    k = int(v.number("attacks") or 1)
    best = f"the best of {k} attacks ({v.get('best_attack')})" if k > 1 else f"its one attack ({v.get('best_attack')})"
    auc = f"AUC {fmt(v.number('auc'), '.2f')} {_interval(v, 'auc_ci')}"
    n = f"{fmt(v.number('n_members'), 'd')} + {fmt(v.number('n_nonmembers'), 'd')} samples"
    corrected = _interval(v, "auc_ci_corrected")
    if v.get("leaks"):
        return (
            f"The global model leaks: {best} separates members from non-members with {auc} on {n} "
            f"(95 % bootstrap interval; corrected for picking the best of {k}: {corrected})."
        )
    if v.get("leaks_uncorrected"):
        return (
            f"The global model shows weak evidence of leakage: {best} reaches {auc} on {n}, but its interval "
            f"corrected for picking the best of {k} ({corrected}) covers chance (0.5)."
        )
    return (
        f"No attack tells the global model's members from non-members: {best} has {auc} on {n}, an interval "
        "that covers chance (0.5)."
    )


def _clients_sentence(v: Metrics, secure: bool = False) -> str:
    clients = v.block("clients")
    m, leaking = len(clients), int(v.number("clients_leaking") or 0)
    uncorrected = int(v.number("clients_leaking_uncorrected") or 0)
    first: Any = next(iter(clients.values()), {})
    k = int(as_number(first.get("attacks")) or 1) if isinstance(first, Mapping) else 1
    which = [
        f"client {c} ({b.get('best_attack')}, AUC {fmt(as_number(b.get('auc')), '.2f')})"
        for c, b in clients.items()
        if isinstance(b, Mapping) and b.get("leaks")
    ]
    rule = f"its best attack's interval, Bonferroni-corrected for {m} clients × {k} attacks, excludes 0.5"
    seen = "fetched by the simulation's oracle (no real party sees them)" if secure else "as the server sees them"
    if leaking:
        lead = f"{leaking} of {m} client updates, {seen}, leak ({rule}: {', '.join(which)})"
    else:
        lead = f"No client update, {seen}, leaks by the rule that {rule}"
    if uncorrected == 0:
        return f"{lead}; no uncorrected 95 % interval excludes 0.5 either."
    if uncorrected == leaking:
        return f"{lead}; the uncorrected 95 % intervals say the same."
    return (
        f"{lead}; uncorrected 95 % intervals exclude 0.5 for {uncorrected} of {m}, which taking the best of "
        f"{m * k} tests can produce by chance alone."
    )


SECURE_SENTENCE = (
    "Under secure aggregation (SecAgg+) the server held no client's update, only each round's aggregate and the "
    "global model{oracle}."
)


def verdict_sentences(verdict: Metrics, secure: bool = False) -> tuple[str, ...]:
    """The reports' opening: does each audited view leak, by the strongest attack and its interval."""
    out = []
    if secure:
        oracle = "; the client rows below come from a simulation oracle" if verdict.block("clients") else ""
        out.append(SECURE_SENTENCE.format(oracle=oracle))
    if verdict.block("global"):
        out.append(_global_sentence(verdict.block("global")))
    if verdict.block("clients"):
        out.append(_clients_sentence(verdict, secure))
    return tuple(out)

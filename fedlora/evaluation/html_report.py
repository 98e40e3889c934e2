"""One self-contained ``report.html`` per run folder, readable offline and on any machine.

Everything comes from the files in the run folder (so old runs get a page too); images and
CSS are inlined, and a missing or unreadable file is stated on the page instead of failing.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..outputs import (
    REPORT_HTML,
    ADAPTER_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    ROC_FIGURE,
    SAMPLES_FILE,
    SPLITS_FILE,
    SUMMARY_FILE,
    TRAINING_FIGURE,
)


# (summary key, column header, format); TPR@0.1% may be None when the attack could not measure it
LEAKAGE_COLUMNS = (
    ("asr", "ASR", ".3f"),
    ("auc", "AUC", ".3f"),
    ("auc_dev", "|AUC−0.5|/0.5", ".3f"),
    ("tpr_at_5pct_fpr", "TPR@5%FPR", ".3f"),
    ("tpr_at_1pct_fpr", "TPR@1%FPR", ".3f"),
    ("tpr_at_0.1pct_fpr", "TPR@0.1%FPR", ".3f"),
    ("n_members", "members", "d"),
    ("n_nonmembers", "non-members", "d"),
)

ATTACK_NOTES = {
    "learned-mlp-paper": "MLP on loss maps, trained on D_aux; epoch picked by test ASR (the paper's optimistic "
                         "selection).",
    "learned-mlp": "the same MLP; epoch and threshold picked on held-out aux data, applied once to D_te.",
    "loss-threshold": "mean denoising loss over several (t, ε) draws; threshold chosen on D_aux.",
}

SPLIT_COLUMNS = (
    ("members", "members"),
    ("member_aux", "member aux"),
    ("member_test", "member test"),
    ("nonmember_aux", "non-member aux"),
    ("nonmember_test", "non-member test"),
)

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:1em 2em;color:#1d1d1f}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
th,td{border:1px solid #d0d0d0;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.l,th.l{text-align:left}td.l:not(:last-child){white-space:nowrap}tr.mean td,tr.sum td{background:#fafae8;font-style:italic}
figure{margin:.8em 0}figure img{max-width:100%;border:1px solid #e2e2e2}
figcaption{font-size:13px;color:#555;max-width:900px}
.meta{color:#444}.why{color:#8a5a00;font-size:12px}
.missing,.notice{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em .8em}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:12px}
nav a{margin-right:1em}details>summary{cursor:pointer;color:#0645ad}
small{color:#666}
"""

# window "load" fires after every <img> settled; headless checks read the counts off <body>
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (im) { return !im.complete || im.naturalWidth === 0; });
  document.body.dataset.images = String(imgs.length);
  document.body.dataset.brokenImages = String(broken.length);
});
"""

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"<svg", "image/svg+xml"),
    (b"<?xml", "image/svg+xml"),
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def as_number(value: Any) -> float | None:
    """A real number, or None for missing/None/NaN/inf/non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any, spec: str = ".3f") -> str:
    """A number for a table cell; "n/a" for anything not a finite number."""
    x = as_number(value)
    if x is None:
        return "n/a" if value is None or isinstance(value, (int, float)) else html.escape(str(value))
    if spec == "d":
        return str(int(round(x)))
    return format(x, spec)


def auc_deviation(metrics: Mapping[str, Any]) -> float | None:
    """|AUC − 0.5| / 0.5, recomputed from the AUC when the summary lacks it."""
    dev = as_number(metrics.get("auc_dev"))
    if dev is not None:
        return dev
    auc = as_number(metrics.get("auc"))
    return None if auc is None else abs(auc - 0.5) / 0.5


def _reason(metrics: Mapping[str, Any], key: str) -> str:
    """Why a leakage number is missing: the summary's own words if it has any."""
    details = metrics.get("details") if isinstance(metrics.get("details"), Mapping) else {}
    for source in (metrics, details):
        for k in (f"{key}_reason", f"{key}_note"):
            if source.get(k):
                return str(source[k])
        for k in ("unmeasurable", "reasons", "notes"):
            if isinstance(source.get(k), Mapping) and source[k].get(key):
                return str(source[k][key])
    if key not in metrics:
        return "not recorded in this run"
    if key == "tpr_at_0.1pct_fpr":
        n = as_number(metrics.get("n_nonmembers"))
        if n is not None and n < 1000:
            return f"needs ≥ 1000 non-members, has {int(n)}"
    return _attack_message(metrics) or "not measurable"


def _na(reason: str) -> str:
    return f'n/a <span class="why">({_e(reason)})</span>'


def _leak_cell(metrics: Mapping[str, Any], key: str, spec: str, unrecorded: frozenset = frozenset()) -> str:
    value = auc_deviation(metrics) if key == "auc_dev" else metrics.get(key)
    if as_number(value) is None:
        return "n/a" if key in unrecorded else _na(_reason(metrics, key))
    text = fmt(value, spec)
    if key == "auc":
        lo, hi = as_number(metrics.get("auc_ci_low")), as_number(metrics.get("auc_ci_high"))
        if lo is not None and hi is not None:
            text += f" <small>[{lo:.3f}, {hi:.3f}]</small>"
    return text


def _details_text(metrics: Mapping[str, Any]) -> str:
    details = metrics.get("details")
    if not isinstance(details, Mapping):
        return ""
    parts = []
    for k, v in details.items():
        x = as_number(v)
        text = format(x, ".4g") if x is not None else str(v)
        parts.append(f"{k} {text if len(text) <= 60 else text[:57] + '...'}")
    return ", ".join(parts)


class _RunFiles:
    """The run folder's files, each None when missing or unreadable (with the reason in ``problems``)."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.problems: dict[str, str] = {}
        self.summary = self._json(SUMMARY_FILE)
        self.splits = self._json(SPLITS_FILE)
        self.config_text = self._text(CONFIG_FILE)
        self.metrics = self._metrics()

    def _text(self, name: str) -> str | None:
        path = self.dir / name
        if not path.is_file():
            self.problems[name] = f"{name} is missing from the run folder"
            return None
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            self.problems[name] = f"{name} could not be read: {err}"
            return None

    def _json(self, name: str) -> Any:
        text = self._text(name)
        if text is None:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            self.problems[name] = f"{name} is not valid JSON: {err}"
            return None
        if not isinstance(data, Mapping):
            self.problems[name] = f"{name} does not hold a JSON object"
            return None
        return data

    def _metrics(self) -> list[dict] | None:
        text = self._text(METRICS_FILE)
        if text is None:
            return None
        rows, bad = [], []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad.append(i)
                continue
            if isinstance(row, Mapping):
                rows.append(dict(row))
            else:
                bad.append(i)
        if bad:
            self.problems[METRICS_FILE] = f"{METRICS_FILE}: unreadable line(s) {', '.join(map(str, bad))} skipped"
        return rows


def _missing(files: _RunFiles, name: str, what: str) -> str:
    reason = files.problems.get(name, f"{name} is missing from the run folder")
    return f'<p class="missing">{_e(reason)}: {_e(what)}.</p>'


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], left: int = 1, row_classes: Iterable[str] = (),
           left_last: bool = False) -> str:
    """Cells are trusted HTML (escape before); the first ``left`` columns (and the last, if asked) align left."""
    header = list(header)
    last = len(header) - 1 if left_last else -1

    def cls(i: int) -> str:
        return ' class="l"' if i < left or i == last else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header))
    classes = list(row_classes)
    body = []
    for n, row in enumerate(rows):
        tr = f' class="{classes[n]}"' if n < len(classes) and classes[n] else ""
        body.append(f"<tr{tr}>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(files: _RunFiles, name: str, alt: str, caption: str) -> str:
    path = files.dir / name
    if not path.is_file():
        return f'<p class="missing">{_e(name)} is missing from the run folder: no {_e(alt)} to show.</p>'
    try:
        data = path.read_bytes()
    except OSError as err:
        return f'<p class="missing">{_e(name)} could not be read ({_e(err)}).</p>'
    mime = next((m for sig, m in _SIGNATURES if data.lstrip()[: len(sig)] == sig), None)
    warn = "" if mime else (f'<p class="missing">{_e(name)} does not look like an image file '
                            f"({len(data)} bytes); it is embedded as is and may not display.</p>")
    uri = f"data:{mime or 'image/png'};base64,{base64.b64encode(data).decode('ascii')}"
    return (f'{warn}<figure><img src="{uri}" alt="{_e(alt)}" data-file="{_e(name)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _header(files: _RunFiles) -> str:
    s = files.summary or {}
    out = [f"<h1>Run <code>{_e(files.dir.name)}</code></h1>"]
    if not s:
        return "".join(out) + _missing(files, SUMMARY_FILE, "method, leakage, quality and cost are unknown")
    ranks = s.get("client_ranks")
    items = [
        ("method", s.get("method")), ("aggregation", s.get("aggregation")), ("clients", s.get("num_clients")),
        ("rounds", s.get("rounds")), ("seed", s.get("seed")), ("dataset", s.get("dataset")),
        ("base", s.get("base_model")), ("adapter rank", s.get("adapter_rank")),
    ]
    if isinstance(ranks, list) and len(set(map(str, ranks))) > 1:
        items.append(("client ranks", ", ".join(map(str, ranks))))
    meta = " · ".join(f"{_e(k)} <b>{_e('n/a' if v is None else v)}</b>" for k, v in items if v is not None or k in
                      ("method", "aggregation", "clients", "rounds", "seed"))
    out.append(f'<p class="meta">{meta}</p>')
    return "".join(out)


def _config(files: _RunFiles) -> str:
    out = ['<h2 id="config">Configuration</h2>']
    if files.config_text is None:
        return "".join(out) + _missing(files, CONFIG_FILE, "the resolved configuration is unknown")
    out.append(f"<details><summary>resolved {_e(CONFIG_FILE)} ({len(files.config_text.splitlines())} lines)"
               f"</summary><pre>{_e(files.config_text)}</pre></details>")
    return "".join(out)


def _count(value: Any) -> int | None:
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    x = as_number(value)
    return None if x is None else int(x)


def _splits(files: _RunFiles) -> str:
    out = ['<h2 id="splits">Data splits</h2>']
    sp = files.splits
    if sp is None:
        return "".join(out) + _missing(files, SPLITS_FILE, "split sizes are unknown")
    clients = sp.get("clients", {})
    if isinstance(clients, list):
        clients = {str(i): c for i, c in enumerate(clients)}
    if not isinstance(clients, Mapping):
        clients = {}
    known = [k for k, _ in SPLIT_COLUMNS]
    extra = sorted({k for c in clients.values() if isinstance(c, Mapping) for k in c} - set(known))
    keys = [k for k in known if any(isinstance(c, Mapping) and k in c for c in clients.values())] + extra
    labels = dict(SPLIT_COLUMNS)
    rows, totals = [], {k: 0 for k in keys}
    for cid in sorted(clients, key=lambda c: (not str(c).isdigit(), int(c) if str(c).isdigit() else 0, str(c))):
        c = clients[cid] if isinstance(clients[cid], Mapping) else {}
        row = [f"client {_e(cid)}"]
        for k in keys:
            n = _count(c.get(k))
            row.append("—" if n is None else str(n))
            totals[k] += n or 0
        rows.append(row)
    public = _count(sp.get("public"))
    facts = []
    if public is not None:
        facts.append(f"public (base pretraining) split: <b>{public}</b> samples")
    for k in ("dataset", "seed", "public_seed"):
        if k in sp:
            facts.append(f"{_e(k)} <b>{_e(sp[k])}</b>")
    if facts:
        out.append(f"<p>{' · '.join(facts)}</p>")
    if rows:
        rows.append(["all clients"] + [str(totals[k]) for k in keys])
        out.append(_table(["client"] + [_e(labels.get(k, k)) for k in keys], rows,
                          row_classes=[""] * (len(rows) - 1) + ["sum"]))
        out.append("<p><small>Member aux / non-member aux train the attacks; member test / non-member test (D_te) "
                   "score them.</small></p>")
    else:
        out.append('<p class="missing">splits.json lists no clients.</p>')
    return "".join(out)


def _round_epsilon(row: Mapping[str, Any]) -> float | None:
    eps = as_number(row.get("dp_epsilon"))
    if eps is not None:
        return eps
    vals = [as_number(c.get("dp_epsilon")) for c in (row.get("clients") or {}).values() if isinstance(c, Mapping)]
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def _training(files: _RunFiles) -> str:
    out = ['<h2 id="training">Training</h2>',
           _figure(files, TRAINING_FIGURE, "per-round training curves",
                   "Per-round curves: the global model's mean denoising loss on members and non-members "
                   "(round 0 is the base model), each client's local training loss, and the proxy attacker's "
                   "accuracy where the method trains one.")]
    rows = files.metrics
    if rows is None:
        return "".join(out) + _missing(files, METRICS_FILE, "no per-round numbers")
    if METRICS_FILE in files.problems:
        out.append(f'<p class="missing">{_e(files.problems[METRICS_FILE])}.</p>')
    if not rows:
        return "".join(out) + f'<p class="missing">{_e(METRICS_FILE)} holds no rounds.</p>'
    has_eps = any(_round_epsilon(r) is not None for r in rows)
    header = ["round", "member loss", "non-member loss", "gap", "clients", "bytes up / client", "round s"]
    header += ["DP ε"] if has_eps else []
    body = []
    for r in rows:
        line = [_e(r.get("round", "?")), fmt(r.get("member_loss"), ".4f"), fmt(r.get("nonmember_loss"), ".4f"),
                fmt(r.get("loss_gap"), "+.4f"), str(len(r.get("clients") or {})),
                fmt(r.get("bytes_up_per_client"), ",.0f") if "bytes_up_per_client" in r else "—",
                fmt(r.get("round_s"), ".1f") if "round_s" in r else "—"]
        if has_eps:
            line.append(fmt(_round_epsilon(r), ".3f"))
        body.append(line)
    out.append(f"<details><summary>per-round table ({len(rows)} rows from {_e(METRICS_FILE)})</summary>"
               f"{_table(header, body)}</details>")
    return "".join(out)


def _attack_names(targets: Iterable[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for attacks in targets:
        for name in attacks if isinstance(attacks, Mapping) else ():
            if name not in names:
                names.append(name)
    return names


def _attack_message(metrics: Mapping[str, Any]) -> str | None:
    """An attack-level explanation (failed, skipped) when the summary gives one."""
    for k in ("error", "skipped", "reason", "note"):
        if metrics.get(k):
            return str(metrics[k])
    return None


def _leak_row(metrics: Any, unrecorded: frozenset = frozenset()) -> list[str]:
    if not isinstance(metrics, Mapping):
        return [_na(f"unexpected entry: {metrics!r}")] + ["n/a"] * (len(LEAKAGE_COLUMNS) - 1) + [""]
    message = _attack_message(metrics)
    if message and as_number(metrics.get("auc")) is None and as_number(metrics.get("asr")) is None:
        return [_na(message)] + ["n/a"] * (len(LEAKAGE_COLUMNS) - 1) + [_e(_details_text(metrics))]
    return [_leak_cell(metrics, k, spec, unrecorded) for k, _, spec in LEAKAGE_COLUMNS] + [_e(_details_text(metrics))]


def _unrecorded(entries: Iterable[Any]) -> frozenset:
    """Columns no attack entry has at all (older summaries): one note instead of a reason per cell."""
    entries = [m for m in entries if isinstance(m, Mapping)]
    if not entries:
        return frozenset()
    return frozenset(k for k, _, _ in LEAKAGE_COLUMNS if k != "auc_dev" and not any(k in m for m in entries))


def _mean_row(entries: list[Mapping[str, Any]]) -> list[str]:
    cells = []
    for key, _, spec in LEAKAGE_COLUMNS:
        vals = [auc_deviation(m) if key == "auc_dev" else as_number(m.get(key)) for m in entries]
        vals = [v for v in vals if v is not None]
        if key.startswith("n_"):
            cells.append(fmt(sum(vals), "d") if vals else "n/a")
        elif vals:  # "(k)": only k of the clients had this number
            partial = f" <small>({len(vals)})</small>" if len(vals) != len(entries) else ""
            cells.append(fmt(sum(vals) / len(vals), spec) + partial)
        else:
            cells.append("n/a")
    return cells + [f"mean over {len(entries)} clients (n summed)"]


def _leakage(files: _RunFiles) -> str:
    out = ['<h2 id="leakage">Membership leakage</h2>']
    if files.summary is None:
        return "".join(out) + _missing(files, SUMMARY_FILE, "no leakage numbers")
    privacy = files.summary.get("privacy") if isinstance(files.summary.get("privacy"), Mapping) else {}
    glob = privacy.get("global") if isinstance(privacy.get("global"), Mapping) else {}
    clients = privacy.get("clients") if isinstance(privacy.get("clients"), Mapping) else {}
    if not glob and not clients:
        return "".join(out) + ('<p class="notice">No membership-inference attack was run on this run '
                               "(the per-round member/non-member loss gap above is the only leakage signal).</p>")
    header = ["attack"] + [_e(h) for _, h, _ in LEAKAGE_COLUMNS] + ["details"]
    entries = [*glob.values(), *(m for c in clients.values() if isinstance(c, Mapping) for m in c.values())]
    unrecorded = _unrecorded(entries)
    out.append(_figure(files, ROC_FIGURE, "ROC curves per attack",
                       "ROC curve of every attack on the final global model (scored on D_te); linear and "
                       "log axes, the right panel showing the low-FPR regime."))
    out.append("<h3>Global model</h3>")
    if glob:
        out.append(_table(header, [[f"<b>{_e(a)}</b>"] + _leak_row(m, unrecorded) for a, m in glob.items()],
                          left_last=True))
    else:
        out.append('<p class="notice">No attack on the global model in summary.json.</p>')
    names = _attack_names([glob, *clients.values()])
    notes = [f"<li><b>{_e(a)}</b>: {_e(ATTACK_NOTES[a])}</li>" for a in names if a in ATTACK_NOTES]
    out.append("<p><small>ASR: accuracy at the attack's chosen threshold. |AUC−0.5|/0.5 counts an inverted signal "
               "as leakage too. TPR at a fixed FPR: the largest TPR on the ROC curve whose FPR does not exceed it. "
               "AUC brackets, where recorded: confidence interval. n/a: not measurable or not recorded, with the "
               "reason." + "".join(f" {_e(h)}: not recorded in this run (an older summary)."
                                   for k, h, _ in LEAKAGE_COLUMNS if k in unrecorded)
               + f"</small></p>{'<ul>' + ''.join(notes) + '</ul>' if notes else ''}")
    out.append("<h3>Client updates</h3>")
    if not clients:
        out.append('<p class="notice">No per-client attack in summary.json (attack_clients off, or a run '
                   "that predates it).</p>")
        return "".join(out)
    out.append("<p>Each client row attacks the adapter that client last sent, with that client's own D_aux/D_te.</p>")
    rows, classes = [], []
    order = sorted(clients, key=lambda c: (not str(c).isdigit(), int(c) if str(c).isdigit() else 0, str(c)))
    for cid in order:
        attacks = clients[cid] if isinstance(clients[cid], Mapping) else {}
        for a, m in attacks.items():
            rows.append([f"client {_e(cid)}", _e(a)] + _leak_row(m, unrecorded))
            classes.append("")
    for a in names:
        entries = [clients[c][a] for c in order
                   if isinstance(clients[c], Mapping) and isinstance(clients[c].get(a), Mapping)]
        if entries:
            rows.append(["all clients", _e(a)] + _mean_row(entries))
            classes.append("mean")
    out.append(_table(["client", "attack"] + header[1:], rows, left=2, row_classes=classes, left_last=True))
    return "".join(out)


def _samples(files: _RunFiles) -> str:
    return ('<h2 id="samples">Samples</h2>' + _figure(
        files, SAMPLES_FILE, "member images and generated samples",
        "Members' real training images (upper row of each pair) above what the final global model generates "
        "from those same members' captions (lower row): a generated image that copies the real one above it "
        "is memorisation showing."))


def _quality(files: _RunFiles) -> str:
    out = ['<h2 id="quality">Quality</h2>']
    if files.summary is None:
        return "".join(out) + _missing(files, SUMMARY_FILE, "no quality numbers")
    q = files.summary.get("quality") if isinstance(files.summary.get("quality"), Mapping) else {}
    if not q:
        return "".join(out) + '<p class="notice">No quality metric was computed for this run.</p>'
    rows, used = [], set()
    if "caption_accuracy" in q:
        n = fmt(q.get("caption_accuracy_n"), "d")
        for key, label in (("caption_accuracy_real_members", "caption-probe accuracy, real member images"),
                           ("caption_accuracy_base", "caption-probe accuracy, base model samples"),
                           ("caption_accuracy", "caption-probe accuracy, final global model samples")):
            if key in q:
                rows.append([_e(label), fmt(q[key], ".3f"), f"{n} captions"])
                used.add(key)
        used.add("caption_accuracy_n")
    if "kid" in q or "fid" in q:
        n_gen, n_ref = fmt(q.get("kid_fid_n_generated"), "d"), fmt(q.get("kid_fid_n_reference"), "d")
        n_text = f"{n_gen} generated vs {n_ref} member images"
        sub = f", subsets of {fmt(q.get('kid_subset_size'), 'd')}" if "kid_subset_size" in q else ""
        if "kid" in q:
            kid = fmt(q.get("kid"), ".4f") + (f" ± {fmt(q.get('kid_std'), '.4f')}" if "kid_std" in q else "")
            rows.append(["KID (Inception, 2048-d)", kid, _e(n_text + sub)])
        if "fid" in q:
            rows.append(["FID (biased at small N: compare equal N only)", fmt(q.get("fid"), ".2f"), _e(n_text)])
        used |= {"kid", "kid_std", "fid", "kid_fid_n_generated", "kid_fid_n_reference", "kid_subset_size"}
    for key in q:
        if key not in used:
            rows.append([_e(key), fmt(q[key], ".4g"), ""])
    out.append(_table(["metric", "value", "n"], rows))
    return "".join(out)


def _dp(files: _RunFiles) -> str:
    out = ['<h2 id="dp">Differential privacy</h2>']
    if files.summary is None:
        return "".join(out) + _missing(files, SUMMARY_FILE, "the DP mechanism is unknown")
    privacy = files.summary.get("privacy") if isinstance(files.summary.get("privacy"), Mapping) else {}
    dp = privacy.get("dp")
    if not isinstance(dp, Mapping):
        return "".join(out) + ('<p class="notice">summary.json has no DP block (a run from before DP reporting): '
                               "no DP mechanism was recorded.</p>")
    mech = dp.get("mechanism", "unknown")
    if mech in (None, "none"):
        return "".join(out) + "<p>No differential-privacy mechanism: <b>no ε</b> (mechanism <code>none</code>).</p>"
    eps = as_number(dp.get("epsilon"))
    if dp.get("formal") is False:
        guarantee = "<b>heuristic, no ε</b>" + (f" — {_e(dp['note'])}" if dp.get("note") else "")
    elif eps is not None:
        delta = as_number(dp.get("delta"))
        guarantee = f"<b>(ε = {eps:.3f}, δ = {format(delta, '.1e') if delta is not None else 'n/a'})</b>"
    else:
        guarantee = "<b>ε n/a</b>" + (f" ({_e(dp['note'])})" if dp.get("note") else " (not reported)")
    out.append(f"<p>Mechanism <code>{_e(mech)}</code>: {guarantee}</p>")
    skip = {"mechanism", "epsilon", "delta", "formal", "note", "epsilon_per_client"}
    rows = [[_e(k), _e(fmt(v, ".4g") if as_number(v) is not None else v)] for k, v in dp.items() if k not in skip]
    if rows:
        out.append(_table(["parameter", "value"], rows))
    per_client = dp.get("epsilon_per_client")
    if isinstance(per_client, Mapping) and per_client:
        out.append("<p>ε per client after its last round:</p>")
        out.append(_table(["client", "ε"], [[f"client {_e(c)}", fmt(v, ".3f")] for c, v in per_client.items()]))
    return "".join(out)


def _human_bytes(value: Any) -> str:
    x = as_number(value)
    if x is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= size:
            return f"{x / size:.2f} {unit} <small>({x:,.0f} B)</small>"
    return f"{x:,.0f} B"


def _cost(files: _RunFiles) -> str:
    out = ['<h2 id="cost">Communication and cost</h2>']
    if files.summary is None:
        return "".join(out) + _missing(files, SUMMARY_FILE, "no communication or timing numbers")
    comm = files.summary.get("communication") if isinstance(files.summary.get("communication"), Mapping) else {}
    labels = {"bytes_up_per_client_round": "up, per client and round (mean)",
              "bytes_down_per_client_round": "down, per client and round (mean)",
              "bytes_eval_only_per_client_round": "eval-only download, per client and round (mean)",
              "bytes_down_per_client_round_max": "down, per client and round (max)"}
    if comm:
        out.append(_table(["payload", "bytes"], [[_e(labels.get(k, k)), _human_bytes(v)] for k, v in comm.items()]))
    else:
        out.append('<p class="notice">No communication numbers in summary.json.</p>')
    t = files.summary.get("timing") if isinstance(files.summary.get("timing"), Mapping) else {}
    if t:
        out.append("<p>Wall time " + ", ".join(f"{_e(k.removesuffix('_s'))} {fmt(v, '.1f')} s" for k, v in t.items())
                   + ".</p>")
    if (files.dir / ADAPTER_DIR).is_dir():
        out.append(f"<p>The final global adapter is in <code>{_e(ADAPTER_DIR)}/</code> (diffusers format).</p>")
    return "".join(out)


def render_html(run_dir: str | Path) -> str:
    """The page as a string (``write_html_report`` saves it)."""
    files = _RunFiles(Path(run_dir))
    sections = [_header(files)]
    if files.problems:
        items = "".join(f"<li>{_e(p)}</li>" for p in files.problems.values())
        sections.append(f'<div class="notice">Incomplete run folder:<ul>{items}</ul></div>')
    sections.append('<nav><a href="#config">config</a><a href="#splits">splits</a><a href="#training">training</a>'
                    '<a href="#leakage">leakage</a><a href="#samples">samples</a><a href="#quality">quality</a>'
                    '<a href="#dp">DP</a><a href="#cost">cost</a></nav>')
    sections += [_config(files), _splits(files), _training(files), _leakage(files), _samples(files),
                 _quality(files), _dp(files), _cost(files)]
    sections.append(f"<hr><p><small>Generated by fedlora.evaluation.html_report from the files in "
                    f"<code>{_e(files.dir.name)}/</code>; self-contained (no external resources).</small></p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>fedlora run {_e(files.dir.name)}</title><style>{_CSS}</style>"
            f"<script>{_SCRIPT}</script></head>\n<body>\n" + "\n".join(sections) + "\n</body></html>\n")


def write_html_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` into the run folder; works on any run folder, complete or not."""
    path = Path(run_dir) / REPORT_HTML
    path.write_text(render_html(run_dir), encoding="utf-8")
    return path

"""RunSummary: every recorded summary.json round-trips exactly; older and unknown keys survive; one reader."""

import json
import math
import re
from pathlib import Path

import pytest

from fedlora.errors import RunFolderError
from fedlora.outputs import SUMMARY_FILE
from fedlora.reports import Communication, Privacy, RunSummary, Timing, load_summary

ROOT = Path(__file__).resolve().parents[1]
RECORDED = sorted((ROOT / "docs" / "measurements").glob("**/summary.json"))


def test_there_are_recorded_summaries():
    assert len(RECORDED) >= 20  # old rules runs and newer paper runs (reevaluate_s, clients_from, CIs)


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.parent.name)
def test_recorded_summary_round_trips_exactly(path):
    text = path.read_text()
    summary = load_summary(path.parent)
    assert json.dumps(summary.to_dict(), indent=1) == text  # same keys, same order, same values
    assert summary.timing is not None and summary.communication is not None and summary.privacy.dp is not None


def test_a_rewrite_keeps_the_file_byte_for_byte(tmp_path):
    source = next(p for p in RECORDED if "clients_from" in p.read_text())
    (tmp_path / SUMMARY_FILE).write_text(source.read_text())
    load_summary(tmp_path).write(tmp_path)
    assert (tmp_path / SUMMARY_FILE).read_text() == source.read_text()
    assert [p.name for p in tmp_path.iterdir()] == [SUMMARY_FILE]  # the temporary file was replaced


def test_typed_fields_of_a_recorded_run():
    summary = load_summary(next(p for p in RECORDED if p.parent.name == "federated-lora-s0").parent)
    assert summary.method == "lora" and summary.num_clients == 8 and summary.timing.reevaluate_s > 0
    assert summary.privacy.clients_from.startswith("training-time audit")
    assert summary.privacy.global_model["pia"].number("auc_ci_low") is not None
    assert summary.privacy.global_model["pia"].number("tpr_at_0.1pct_fpr") is None  # null: not measurable
    assert summary.privacy.global_model["pia"].block("unmeasurable")
    assert summary.privacy.attack_names()[:2] == ["learned-mlp-paper", "learned-mlp"]


def test_an_old_summary_reads_with_defaults():
    summary = RunSummary.from_dict({"method": "lora", "privacy": {"global": {"loss-threshold": {"auc": 0.6}}}})
    assert summary.aggregation is None and summary.timing is None and summary.communication is None
    assert summary.privacy.dp is None and summary.privacy.clients == {} and summary.privacy.clients_from is None
    assert summary.quality == {} and summary.client_ranks is None
    assert summary.privacy.global_model["loss-threshold"].number("asr") is None
    assert Timing.from_dict({"total_s": 3.0}) == Timing(total_s=3.0)  # keys a section lacks: defaults
    assert RunSummary.from_dict({}).to_dict() == {"privacy": {"global": {}, "clients": {}}, "quality": {}}


def test_unknown_and_malformed_keys_survive_a_rewrite():
    data = {
        "method": "lora",
        "future_key": [1, 2],
        "quality": {"kid": 0.05},
        "privacy": {"global": {}, "clients": {}, "dp": {"mechanism": "none"}, "audit_version": 3},
        "timing": {"total_s": 1.0, "train_s": 0.5, "eval_s": 0.5, "queue_s": 0.25},
        "communication": {**Communication().to_dict(), "bytes_control": 12.0},
        "client_ranks": "4,4",  # not a list: read as absent, written back as it was
    }
    summary = RunSummary.from_dict(data)
    assert summary.client_ranks is None and summary.extra == {"future_key": [1, 2], "client_ranks": "4,4"}
    assert summary.timing.extra == {"queue_s": 0.25} and summary.privacy.extra == {"audit_version": 3}
    assert summary.to_dict() == data
    assert Privacy.from_dict({"global": "broken"}).to_dict() == {"global": "broken", "clients": {}}
    entry = Privacy.from_dict({"global": {"odd": 0.5}}).global_model["odd"]
    assert "unexpected entry" in entry["error"]  # reports show it instead of failing


def test_write_is_atomic_json_with_nan_as_null(tmp_path):
    summary = RunSummary(method="lora", quality={"kid": math.nan}, timing=Timing(1.0, 0.5, 0.5))
    path = summary.write(tmp_path)
    assert path == tmp_path / SUMMARY_FILE and not (tmp_path / (SUMMARY_FILE + ".tmp")).exists()
    data = json.loads(path.read_text())
    assert data["quality"] == {"kid": None} and data["timing"] == {"total_s": 1.0, "train_s": 0.5, "eval_s": 0.5}


def test_load_errors_name_the_file(tmp_path):
    path = re.escape(str(tmp_path / SUMMARY_FILE))
    with pytest.raises(RunFolderError, match=f"^{path} is missing"):
        load_summary(tmp_path)
    (tmp_path / SUMMARY_FILE).write_text("[1, 2]")
    with pytest.raises(RunFolderError, match=f"^{path} is damaged: holds a JSON list, not an object"):
        load_summary(tmp_path)
    (tmp_path / SUMMARY_FILE).write_text('{"method": "lo')  # truncated mid-write
    with pytest.raises(RunFolderError, match=f"^{path} is damaged: not valid JSON"):
        load_summary(tmp_path)
    (tmp_path / SUMMARY_FILE).write_bytes(b'{"method": "\xff"}')
    with pytest.raises(RunFolderError, match=f"^{path} is damaged"):
        load_summary(tmp_path)


def test_skipped_images_round_trip_and_reach_both_reports(tmp_path):
    """data.on_bad_image = "skip": the count and every name in summary.json, the first names in the reports."""
    from fedlora.config import load_config
    from fedlora.finalize import RunResult, build_summary
    from fedlora.reports import write_reports
    from fedlora.reports.sections import SHOWN_SKIPPED

    cfg = load_config("configs/smoke.toml", ["data.on_bad_image='skip'"])
    names = [f"bad/{i:02d}.png" for i in range(SHOWN_SKIPPED + 3)]
    summary = build_summary(cfg, RunResult(Timing(), Communication()), names)
    summary.write(tmp_path)
    data = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert data["skipped_images"] == {"count": len(names), "files": names}
    assert list(data)[list(data).index("dataset") + 1] == "skipped_images"  # next to the dataset it concerns
    assert load_summary(tmp_path).to_dict() == data
    md, html = (p.read_text() for p in write_reports(tmp_path))
    for text in (md, html):
        assert "Images skipped as undecodable" in text and str(len(names)) in text
        assert names[0] in text and names[SHOWN_SKIPPED - 1] in text and names[SHOWN_SKIPPED] not in text
        assert "and 3 more" in text
    # not skipping: no block; skipping nothing: a count of 0, still recorded
    assert (
        "skipped_images"
        not in build_summary(load_config("configs/smoke.toml"), RunResult(Timing(), Communication())).to_dict()
    )
    assert build_summary(cfg, RunResult(Timing(), Communication())).to_dict()["skipped_images"] == {
        "count": 0,
        "files": [],
    }


def test_no_mapping_guard_chains_over_the_summary_outside_the_reader():
    """summary.json is read once, by fedlora.reports.summary (and the run-folder reader): no ad-hoc guards."""
    readers = {ROOT / "fedlora" / "reports" / "summary.py", ROOT / "fedlora" / "reports" / "folder.py"}
    guard = re.compile(r"isinstance\([^()]*,\s*Mapping\)\s*else\s*\{\}")
    offenders = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sorted((ROOT / "fedlora").rglob("*.py"))
        if p not in readers
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if guard.search(line)
    ]
    assert offenders == []

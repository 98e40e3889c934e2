"""compare_runs on fake run folders: the Markdown table, the scatter's axes, and its errors."""

import json

import pytest

from fedlora.errors import RunFolderError
from fedlora.outputs import COMPARISON_TABLE, PRIVACY_QUALITY_FIGURE, SUMMARY_FILE
from fedlora.reports import compare_runs


def attack(auc, asr):
    return {"auc": auc, "auc_dev": abs(auc - 0.5) / 0.5, "asr": asr, "n_members": 16, "n_nonmembers": 16}


def summary(method="lora", quality=None, global_attacks=None, clients=None, dp=None):
    privacy = {"global": global_attacks or {}, "clients": clients or {}}
    if dp is not None:
        privacy["dp"] = dp
    return {
        "method": method,
        "aggregation": "fedavg",
        "num_clients": 2,
        "rounds": 3,
        "seed": 0,
        "privacy": privacy,
        "quality": quality or {},
    }


def write_run(path, s):
    path.mkdir(parents=True)
    (path / SUMMARY_FILE).write_text(json.dumps(s))
    return path


def cells(line):
    """Markdown cells, splitting on unescaped pipes only."""
    return [c.strip() for c in line.replace("\\|", "\0").strip().strip("|").split("|")]


@pytest.fixture
def runs(tmp_path):
    a = write_run(
        tmp_path / "runs" / "plain",
        summary(
            quality={"kid": 0.05, "kid_std": 0.005, "fid": 139.0, "caption_accuracy": 0.9},
            global_attacks={"loss-threshold": attack(0.75, 0.7)},
            clients={"0": {"loss-threshold": attack(0.6, 0.6)}, "1": {"loss-threshold": attack(0.7, 0.8)}},
            dp={"mechanism": "none"},
        ),
    )
    b = write_run(
        tmp_path / "runs" / "dp",
        summary(
            method="dp-lora",
            quality={"kid": 0.08, "kid_std": 0.006},
            global_attacks={"loss-threshold": attack(0.55, 0.52), "pia": {"auc": 0.3, "asr": 0.6}},
            dp={"mechanism": "dp-lora", "epsilon": 3.25, "delta": 1e-5, "formal": True},
        ),
    )
    c = write_run(
        tmp_path / "runs" / "implicit",
        summary(  # older run: no KID, no attack
            method="implicit-dp", quality={"caption_accuracy": 0.8}, dp={"mechanism": "implicit-dp", "formal": False}
        ),
    )
    return [a, b, c]


def test_table_has_every_run_and_attack(runs, tmp_path):
    table, figure = compare_runs(runs, tmp_path / "out")
    assert table == tmp_path / "out" / COMPARISON_TABLE and figure == tmp_path / "out" / PRIVACY_QUALITY_FIGURE
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [ln for ln in table.read_text().splitlines() if ln.startswith("|")]
    header, rows = cells(lines[0]), {cells(ln)[0]: dict(zip(cells(lines[0]), cells(ln))) for ln in lines[2:]}
    assert all(len(cells(ln)) == len(header) for ln in lines)  # no pipe leaked out of a cell
    assert set(rows) == {"plain", "dp", "implicit"}
    for column in ("loss-threshold ASR", "pia ASR", "pia \0AUC−0.5\0/0.5", "DP ε", "KID", "FID", "caption acc."):
        assert column in header, column
    plain, dp, implicit = rows["plain"], rows["dp"], rows["implicit"]
    assert plain["DP ε"] == "—" and dp["DP ε"] == "3.25 (dp-lora)" and "heuristic" in implicit["DP ε"]
    assert plain["KID"] == "0.0500 ± 0.0050" and plain["FID"] == "139.00" and dp["FID"] == "—"
    assert plain["loss-threshold ASR"] == "0.700" and plain["pia ASR"] == "—"
    assert dp["pia \0AUC−0.5\0/0.5"] == "0.400"  # recomputed from the AUC when auc_dev is absent
    assert dp["max \0AUC−0.5\0/0.5"] == "0.400" and plain["max \0AUC−0.5\0/0.5"] == "0.500"
    assert plain["client loss-threshold ASR (mean)"] == "0.700 (n=2)"
    assert dp["client loss-threshold ASR (mean)"] == "—" and implicit["loss-threshold ASR"] == "—"
    text = table.read_text()
    assert "x = KID" in text and "implicit: no KID and no attack on the global model" in text


def test_quality_falls_back_to_caption_accuracy(tmp_path):
    runs = [
        write_run(
            tmp_path / name,
            summary(quality={"caption_accuracy": acc}, global_attacks={"loss-threshold": attack(auc, 0.6)}),
        )
        for name, acc, auc in (("a", 0.9, 0.6), ("b", 0.7, 0.8))
    ]
    table, figure = compare_runs(runs, tmp_path / "out")
    text = table.read_text()
    assert "x = 1 − caption-probe accuracy" in text and "Not plotted" not in text
    assert figure.is_file()


def test_same_folder_names_are_told_apart(tmp_path):
    runs = [write_run(tmp_path / parent / "default", summary()) for parent in ("x", "y")]
    text = compare_runs(runs, tmp_path / "out")[0].read_text()
    assert "| x/default |" in text and "| y/default |" in text


def test_a_folder_without_summary_is_named(runs, tmp_path):
    bad = tmp_path / "runs" / "unfinished"
    bad.mkdir()
    with pytest.raises(RunFolderError, match="unfinished/summary.json is missing"):
        compare_runs([*runs, bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    (bad / SUMMARY_FILE).write_text("{")
    with pytest.raises(RunFolderError, match="unfinished/summary.json is damaged: not valid JSON"):
        compare_runs([bad], tmp_path / "out")
    with pytest.raises(ValueError):
        compare_runs([], tmp_path / "out")

"""report.md from fake run folders (the fixtures of test_html_report), and old summaries in both reports."""

import json

import pytest
from test_html_report import attack, make_run, make_summary

from fedlora.outputs import CONFIG_FILE, REPORT_FILE, REPORT_HTML, SAMPLES_FILE, SPLITS_FILE, SUMMARY_FILE
from fedlora.registry import ATTACKS
from fedlora.reports import RunFolder, render_markdown, write_markdown_report, write_reports


@pytest.fixture
def run(tmp_path):
    summary = make_summary()
    # 16 non-members resolve FPR only down to 1/16 > 5%: the client's TPR@5%FPR is not measurable
    summary["privacy"]["clients"]["0"]["loss-threshold"]["tpr_at_5pct_fpr"] = None
    return make_run(tmp_path / "fake-run", summary)


def test_report_md_holds_the_run(run):
    path = write_markdown_report(run)
    assert path == run / REPORT_FILE
    text = path.read_text()
    for expected in (
        "# Run `fake.run`",  # the config's run name
        "Method **smp-lora**, aggregation **fedavg**, 2 clients, 2 rounds, seed 7, dataset `mnist`",
        "- public (base pretraining): 24 samples",
        "| client 0 | 8 | 4 | 4 | 3 | 5 |",
        "| all clients | 16 | 8 | 8 | 6 | 10 |",
        "| round | member loss | non-member loss | gap | clients |",  # the per-round table
        "| 2 | 0.0800 | 0.1000 | +0.0200 | 2 |",
        "![training curves](training.png)",
        "![samples](samples.png)",
        "![ROC curves](roc.png)",
        "| target | attack | ASR | AUC | \\|AUC−0.5\\|/0.5 |",
        # n/m: TPR@0.1%FPR with 32 non-members (no reason recorded, and the summary's own reason)
        # (this older summary has no aux-threshold TPRs: those columns are n/a)
        "| global | loss-threshold | 0.742 | 0.871 [0.600, 0.800] | 0.742 | 0.125 | n/a | 0.062 | n/a | n/m | n/a | 32 | 32 |",
        "| global | secmi | 0.550 | 0.600 | 0.200 | 0.125 | n/a | 0.062 | n/a | n/m | n/a | 32 | 32 |",
        "| global | pia | 0.500 | 0.500 | 0.000 | 0.125 | n/a | 0.062 | n/a | 0.031 | n/a | 32 | 32 |",
        "| client 0 | loss-threshold | 0.625 | 0.600 | 0.200 | n/m | n/a | 0.062 |",
        "| all clients (mean) | loss-threshold | 0.750 | 0.650 | 0.300 | 0.125 (1) | n/a | 0.062 | n/a | n/a | n/a | 32 | 32 |",
        "n/m: not measurable",
        "Mechanism `dp-fedavg`: (ε = 2.500, δ = 1.0e-05).",
        "| caption-probe accuracy, final global model samples | 0.917 | 24 captions |",
        "| KID (Inception, 2048-d) | 0.0530 ± 0.0054 |",
        "| 139.07 |",
        "- wall time 12.5 s (training rounds 8.0 s, evaluation 4.5 s)",
        "- per client and round: 74752 bytes up, 74752 bytes down",
    ):
        assert expected in text, expected
    for name in ("loss-threshold", "pia", "secmi"):  # the registry's notes, only for the attacks in the table
        entry = ATTACKS.entry(name)
        assert f"- `{name}`: {entry.description}. *{entry.reference}*" in text
    assert "`learned-mlp-paper`" not in text


def test_write_reports_writes_both_from_the_folder(run):
    md, page = write_reports(run)
    assert (md, page) == (run / REPORT_FILE, run / REPORT_HTML)
    assert "0.871 [0.600, 0.800]" in md.read_text() and "0.871 <small>[0.600, 0.800]</small>" in page.read_text()


def test_missing_and_corrupt_files_are_stated(run):
    (run / CONFIG_FILE).unlink()
    (run / SPLITS_FILE).write_text("{not json")
    (run / SAMPLES_FILE).unlink()
    text = write_markdown_report(run).read_text()
    assert text.startswith("# Run `fake-run`")  # no config: the folder's name
    assert "- config.toml is missing from the run folder" in text
    assert "splits.json is not valid JSON" in text and "split sizes are unknown" in text
    assert "samples.png is missing from the run folder: no samples to show." in text
    assert "| global | loss-threshold | 0.742 |" in text  # the rest is still there

    (run / SUMMARY_FILE).unlink()
    text = write_markdown_report(run).read_text()
    assert "summary.json is missing from the run folder: method, leakage, quality and cost are unknown." in text


def test_an_old_summary_renders_in_both_reports_and_says_what_is_missing(tmp_path):
    old = {
        "method": "lora",
        "aggregation": "fedavg",
        "num_clients": 2,
        "rounds": 2,
        "seed": 0,
        "privacy": {"global": {"membership-oracle": {"auc": 0.7, "asr": 0.6}}},
    }  # an attack no longer known
    run = make_run(tmp_path / "old", old)
    md, page = (p.read_text() for p in write_reports(run))
    for text in (md, page):
        assert "membership-oracle" in text and "0.600" in text
        assert "members: not recorded in this run (an older summary)" in text
        assert "no DP block" in text and "No quality metric was computed for this run." in text
    assert "`membership-oracle`:" not in md and "<b>membership-oracle</b>:" not in page  # no note
    assert "summary.json records no timing" in md and "summary.json records no communication" in md
    assert "No timing in summary.json." in page and "No communication numbers in summary.json." in page

    bare = make_run(tmp_path / "bare", {"method": "lora"})
    md, page = (p.read_text() for p in write_reports(bare))
    assert "aggregation **n/a**" in md and "No membership-inference attack was run" in md
    assert "No membership-inference attack was run" in page
    assert json.loads((bare / SUMMARY_FILE).read_text()) == {"method": "lora"}  # reports never rewrite it


def test_failed_attacks_and_client_means(tmp_path):
    summary = make_summary()
    summary["privacy"]["global"]["broken"] = {"error": "attack diverged"}
    summary["privacy"]["clients"]["1"]["pia"] = attack(0.55, 0.5)
    for attacks in summary["privacy"]["clients"].values():  # 16 non-members per client cannot resolve 0.1%
        attacks["loss-threshold"]["tpr_at_0.1pct_fpr"] = None
    text = write_markdown_report(make_run(tmp_path / "run", summary)).read_text()
    assert "| global | broken (attack diverged) | n/a | n/a |" in text
    assert "| all clients (mean) | pia | 0.500 |" in text  # the mean of the one client that has it
    assert (
        "| all clients (mean) | loss-threshold | 0.750 | 0.650 | 0.300 | 0.125 | n/a | 0.062 | n/a | n/m | n/a | 32 | 32 |"
        in text
    )


def test_report_opens_with_the_verdict_and_shows_aux_threshold_tprs(tmp_path):
    summary = make_summary()
    m = summary["privacy"]["global"]["loss-threshold"]
    m.update(
        {"tpr_at_5pct_fpr_aux": 0.3, "fpr_at_5pct_fpr_aux": 0.07, "tpr_at_1pct_fpr_aux": None, "n_aux_nonmembers": 40}
    )
    summary["privacy"]["verdict"] = {
        "global": {
            "best_attack": "loss-threshold",
            "attacks": 3,
            "auc": 0.871,
            "auc_ci": [0.6, 0.8],
            "n_members": 32,
            "n_nonmembers": 32,
            "auc_ci_corrected": [0.55, 0.85],
            "leaks": True,
            "leaks_uncorrected": True,
        },
        "clients": {
            "0": {"best_attack": "loss-threshold", "attacks": 1, "auc": 0.6, "leaks": False},
            "1": {"best_attack": "loss-threshold", "attacks": 1, "auc": 0.9, "leaks": True},
        },
        "clients_leaking": 1,
        "clients_leaking_uncorrected": 2,
    }
    text = render_markdown(RunFolder(make_run(tmp_path / "v", summary)))
    verdict = [line for line in text.splitlines() if line.startswith("**")]
    assert verdict[0] == (
        "**The global model leaks: the best of 3 attacks (loss-threshold) separates members from "
        "non-members with AUC 0.87 [0.60, 0.80] on 32 + 32 samples (95 % bootstrap interval; "
        "corrected for picking the best of 3: [0.55, 0.85]).**"
    )
    assert verdict[1].startswith("**1 of 2 client updates, as the server sees them, leak") and "client 1" in verdict[1]
    assert "uncorrected 95 % intervals exclude 0.5 for 2 of 2" in verdict[1] and "client 0" not in verdict[1]
    assert text.index(verdict[0]) < text.index("## Splits")  # the report opens with it
    row = next(line for line in text.splitlines() if line.startswith("| global | loss-threshold"))
    assert "| 0.125 | 0.300 FPR 0.070 | 0.062 | n/m |" in row  # 40 aux non-members cannot fix a 1 % threshold

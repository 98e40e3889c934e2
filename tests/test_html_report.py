"""report.html from fake run folders: self-contained, complete, robust to missing files; headless render."""

import base64
import importlib.util
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from fedlora.outputs import (
    CONFIG_FILE,
    METRICS_FILE,
    REPORT_HTML,
    ROC_FIGURE,
    SAMPLES_FILE,
    SPLITS_FILE,
    SUMMARY_FILE,
    TRAINING_FIGURE,
)
from fedlora.reports import write_html_report

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_html_report.py"
FIGURES = (SAMPLES_FILE, TRAINING_FIGURE, ROC_FIGURE)


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_html_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


def attack(auc, asr, n=16, **extra):
    return {
        "auc": auc,
        "auc_dev": abs(auc - 0.5) / 0.5,
        "asr": asr,
        "tpr_at_1pct_fpr": 0.0625,
        "tpr_at_5pct_fpr": 0.125,
        "n_members": n,
        "n_nonmembers": n,
        "details": {"threshold": 0.5},
        **extra,
    }


def make_summary(**overrides):
    summary = {
        "method": "smp-lora",
        "aggregation": "fedavg",
        "num_clients": 2,
        "rounds": 2,
        "seed": 7,
        "base_model": "embedded",
        "dataset": "mnist",
        "adapter_rank": 4,
        "client_ranks": [4, 4],
        "privacy": {
            "global": {
                "loss-threshold": attack(
                    0.871, 0.742, n=32, **{"tpr_at_0.1pct_fpr": None, "auc_ci_low": 0.6, "auc_ci_high": 0.8}
                ),
                "pia": attack(0.5, 0.5, n=32, **{"tpr_at_0.1pct_fpr": 0.031}),
                "secmi": attack(
                    0.6,
                    0.55,
                    n=32,
                    **{
                        "tpr_at_0.1pct_fpr": None,  # leakage_metrics' own reason
                        "unmeasurable": {"tpr_at_0.1pct_fpr": "32 non-members resolve"},
                    },
                ),
            },
            "clients": {"0": {"loss-threshold": attack(0.6, 0.625)}, "1": {"loss-threshold": attack(0.7, 0.875)}},
            "dp": {"mechanism": "dp-fedavg", "epsilon": 2.5, "delta": 1e-5, "noise_multiplier": 0.8, "formal": True},
        },
        "quality": {
            "caption_accuracy_real_members": 0.83,
            "caption_accuracy_base": 0.9,
            "caption_accuracy": 0.917,
            "caption_accuracy_n": 24.0,
            "kid": 0.053,
            "kid_std": 0.0054,
            "fid": 139.07,
            "kid_fid_n_generated": 64.0,
            "kid_fid_n_reference": 64.0,
            "kid_subset_size": 50.0,
        },
        "timing": {"total_s": 12.5, "train_s": 8.0, "eval_s": 4.5},
        "communication": {"bytes_up_per_client_round": 74752.0, "bytes_down_per_client_round": 74752.0},
    }
    summary.update(overrides)
    return summary


def png(path: Path, color) -> None:
    Image.new("RGB", (24, 16), color).save(path)


def make_run(root: Path, summary=None, figures=FIGURES) -> Path:
    root.mkdir(parents=True)
    (root / SUMMARY_FILE).write_text(json.dumps(summary or make_summary()))
    (root / CONFIG_FILE).write_text('[run]\nname = "fake.run"\nseed = 7\n[data]\ndata_dir = "data/<run>"\n')
    ids = [f"mnist-{i:05d}" for i in range(40)]
    clients = {
        str(c): {
            "members": ids[:8],
            "member_aux": ids[:4],
            "member_test": ids[4:8],
            "nonmember_aux": ids[8:11],
            "nonmember_test": ids[11:16],
        }
        for c in range(2)
    }
    splits = {"version": 1, "dataset": "mnist", "public": ids[16:], "clients": clients}
    (root / SPLITS_FILE).write_text(json.dumps(splits))
    rows = [{"round": 0, "member_loss": 0.1, "nonmember_loss": 0.1, "loss_gap": 0.0}]
    rows += [
        {
            "round": r,
            "member_loss": 0.1 - r / 100,
            "nonmember_loss": 0.1,
            "loss_gap": r / 100,
            "dp_epsilon": 1.25 * r,
            "clients": {"0": {"train_loss": 0.1}, "1": {"train_loss": 0.2}},
        }
        for r in (1, 2)
    ]
    (root / METRICS_FILE).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name, color in zip(figures, ("red", "green", "blue")):
        png(root / name, color)
    return root


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "fake-run")


def test_page_is_self_contained(run):
    page = write_html_report(run)
    assert page == run / REPORT_HTML
    text = page.read_text()
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert re.findall(r'href="([^"]*)"', text) and all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', text))
    assert "http://" not in text and "https://" not in text and "url(" not in text and "<link" not in text
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert embedded == {(run / name).read_bytes() for name in FIGURES}
    assert "document.body.dataset.brokenImages" in text and "naturalWidth" in text


def test_page_holds_the_run(run):
    text = write_html_report(run).read_text()
    for expected in (
        "smp-lora",
        "fedavg",
        "seed <b>7</b>",
        "data/&lt;run&gt;",  # config, escaped
        "member aux",
        "non-member test",
        "<td>8</td><td>4</td><td>4</td><td>3</td><td>5</td>",
        "0.742",
        "0.871 <small>[0.600, 0.800]</small>",
        "needs ≥ 1000 non-members, has 32",
        "0.031",
        "(32 non-members resolve)",
        "pia",
        "client 1",
        "mean over 2 clients",
        "0.750",  # (0.625 + 0.875) / 2
        "upper row",
        "memorisation",
        "0.0530 ± 0.0054",
        "139.07",
        "64 generated vs 64 member images",
        "0.917",
        "24 captions",
        "dp-fedavg",
        "ε = 2.500",
        "δ = 1.0e-05",
        "73.00 KiB",
        "2.500",
    ):
        assert expected in text, expected


def test_dp_variants_and_old_summaries(tmp_path):
    implicit = make_summary()
    implicit["privacy"]["dp"] = {"mechanism": "implicit-dp", "formal": False, "note": "not a formal guarantee"}
    assert "heuristic, no ε" in write_html_report(make_run(tmp_path / "a", implicit)).read_text()
    none = make_summary()
    none["privacy"]["dp"] = {"mechanism": "none"}
    assert "No differential-privacy mechanism" in write_html_report(make_run(tmp_path / "b", none)).read_text()
    old = make_summary()  # before DP reporting and TPR@0.1%: no dp block, no such key
    del old["privacy"]["dp"]
    for attacks in [old["privacy"]["global"], *old["privacy"]["clients"].values()]:
        for m in attacks.values():
            m.pop("tpr_at_0.1pct_fpr", None)
    old["privacy"]["global"]["broken"] = {"error": "attack diverged"}
    text = write_html_report(make_run(tmp_path / "c", old)).read_text()
    assert "no DP block" in text
    assert "TPR@0.1%FPR test ROC: not recorded in this run" in text
    assert "attack diverged" in text


def test_missing_and_corrupt_files_are_stated(tmp_path):
    run = make_run(tmp_path / "partial", figures=(TRAINING_FIGURE, ROC_FIGURE))
    (run / CONFIG_FILE).unlink()
    (run / SPLITS_FILE).write_text("{not json")
    with (run / METRICS_FILE).open("a") as fh:
        fh.write("garbage\n")
    text = write_html_report(run).read_text()
    assert "samples.png is missing from the run folder" in text
    assert "config.toml is missing from the run folder" in text
    assert "splits.json is not valid JSON" in text
    assert "unreadable line(s) 4 skipped" in text
    assert text.count("<img") == 2

    empty = tmp_path / "empty"
    empty.mkdir()
    text = write_html_report(empty).read_text()
    assert "summary.json is missing" in text and "<img" not in text

    corrupt = make_run(tmp_path / "corrupt")
    (corrupt / SAMPLES_FILE).write_bytes(b"this is not a png")
    assert "does not look like an image file" in write_html_report(corrupt).read_text()


@pytest.fixture(scope="module")
def chromium():
    found = checker.find_chromium()
    if found is None:
        pytest.skip("no Chromium binary on PATH (apt-get install chromium, or set $CHROMIUM)")
    return found


def test_headless_render_has_no_broken_images(run, chromium):
    assert checker.check_html(write_html_report(run), chromium) == (3, 0)


def test_headless_render_catches_a_corrupt_image(tmp_path, chromium):
    run = make_run(tmp_path / "corrupt")
    data = (run / SAMPLES_FILE).read_bytes()
    (run / SAMPLES_FILE).write_bytes(data[:40])  # a truncated PNG: right signature, undecodable
    write_html_report(run)
    assert checker.check_html(run / REPORT_HTML, chromium) == (3, 1)
    assert checker.main([str(run), "--chromium", chromium]) == 1


def test_check_script_exit_codes(run, tmp_path, chromium):
    assert checker.main([str(run), "--chromium", chromium]) == 1  # no report.html yet
    assert checker.main([str(run), "--chromium", chromium, "--write"]) == 0
    assert checker.main([str(run), "--chromium", str(tmp_path / "no-such-chromium")]) == 2
    plain = tmp_path / "plain.html"
    plain.write_text("<html><body><p>no counts</p></body></html>")
    with pytest.raises(checker.HtmlCheckError, match="load script did not run"):
        checker.check_html(plain, chromium)
    # an image left as a file next to the page is broken once the page travels alone
    relative = run / "relative.html"
    relative.write_text(re.sub(r'src="data:[^"]*"', f'src="{SAMPLES_FILE}"', (run / REPORT_HTML).read_text(), count=1))
    assert checker.check_html(relative, chromium) == (3, 1)


def test_no_chromium_is_exit_code_2(run, tmp_path, monkeypatch):
    write_html_report(run)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CHROMIUM", raising=False)
    assert checker.find_chromium() is None
    assert checker.main([str(run)]) == 2

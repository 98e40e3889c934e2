"""Resume on the real deployment engine: a ServerApp killed (SIGKILL) after round 1 and resubmitted with run config
``resume`` ends with the adapter of an uninterrupted run, tensor by tensor (``scripts/deploy_resume_check.py``, run
here in-process with long-lived silo workers; it ends every process it started by its PID)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import deploy_resume_check  # noqa: E402


@pytest.mark.timeout(600)
def test_a_killed_serverapp_resumed_ends_with_the_uninterrupted_adapter(tmp_path, capsys):
    assert deploy_resume_check.main(["--workdir", str(tmp_path), "--workers"]) == 0
    out = capsys.readouterr().out
    assert "killed flwr-serverapp" in out and "run B rounds [0, 1, 2]" in out
    assert "OK: the resumed run's adapter equals the uninterrupted run's, tensor by tensor" in out

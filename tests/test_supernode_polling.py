"""The SuperNode entry point that pulls every 0.2 s: it caps only Flower's polling waits, and only where measured."""

from __future__ import annotations

import importlib.util
import time
import types

from flwr.supernode import start_client_internal

from fedlora import deploy
from fedlora.supernode_polling import PULL_S, CappedSleep, cap_polling


def module_with(tmp_path, name: str, source: str) -> types.ModuleType:
    path = tmp_path / f"{name}.py"
    path.write_text("import time\n\n" + source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_capped_sleep_waits_at_most_the_cap_and_is_time_otherwise():
    capped = CappedSleep(0.05)
    started = time.monotonic()
    capped.sleep(3)
    assert time.monotonic() - started < 1.0  # 3 s asked, ~0.05 s slept
    assert capped.monotonic() >= started and capped.perf_counter() > 0  # every other name is the time module's


def test_the_installed_supernode_loop_is_the_measured_one_and_gets_capped():
    original = start_client_internal.time
    try:
        assert cap_polling(start_client_internal, 0.05)
        assert isinstance(start_client_internal.time, CappedSleep) and start_client_internal.time.cap == 0.05
    finally:
        start_client_internal.time = original


def test_a_loop_with_a_sleep_not_measured_is_left_unchanged(tmp_path):
    unknown = module_with(tmp_path, "unknown_loop", "def loop():\n    time.sleep(3)\n    time.sleep(7)\n")
    assert not cap_polling(unknown)
    assert unknown.time is time
    measured = module_with(tmp_path, "measured_loop", "def loop():\n    time.sleep(3)\n    time.sleep(0.5)\n")
    assert cap_polling(measured) and measured.time.cap == PULL_S


def test_deploy_starts_supernodes_through_the_polling_entry_point(tmp_path):
    argv = deploy.supernode_argv(deploy.Credentials(tmp_path), 0, "127.0.0.1:8000", tmp_path, 1)
    assert argv[1:3] == ["-m", "fedlora.supernode_polling"] and "--superlink" in argv

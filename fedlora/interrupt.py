"""Ctrl-C that stops a run cleanly: the first SIGINT asks the server to stop after the round in flight.

Flower runs the ServerApp in a thread while the main thread drives the simulation engine; a
KeyboardInterrupt raised in the main thread left both waiting on each other (the process lived
on for minutes). Here the main thread's handler only sets a flag; the server checks it after each
round's checkpoint and raises ``RunInterrupted``, which ends the engine and its Ray instance the
normal way. A second Ctrl-C restores Python's default and interrupts at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_CODE = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd command

_requested = threading.Event()


class RunInterrupted(Exception):
    """The run stopped on request after ``last_round``; its folder holds a checkpoint to resume from."""

    def __init__(self, run_dir: Path, last_round: int):
        super().__init__(f"run interrupted after round {last_round}; continue it with: fedlora run --resume {run_dir}")
        self.run_dir, self.last_round = run_dir, last_round


def requested() -> bool:
    return _requested.is_set()


def request() -> None:
    """What the signal handler does (tests call it directly)."""
    _requested.set()


@contextmanager
def stop_on_first_sigint() -> Iterator[None]:
    """Within: the first SIGINT sets the stop flag and prints one line; the second interrupts at once."""
    _requested.clear()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def handler(signum: int, frame: object) -> None:
        request()
        print(
            "\nstopping after the current round (and its checkpoint); press Ctrl-C again to abort at once",
            file=sys.stderr,
            flush=True,
        )
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()

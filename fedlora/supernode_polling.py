"""``flower-supernode`` that looks for the server's next message every ``PULL_S`` s instead of every 3 s.

flwr 1.42's SuperNode loop (``flwr.supernode.start_client_internal``) sleeps 3 s after every pull that found
no message, and 0.5 s between looks for its ClientApp's reply. Between rounds every silo pulls once right after
its reply, finds nothing (the server waits for the slowest silo), and sleeps: the next round's message then waits
up to 3 s on each silo, ~3 s of a round that trains for ~0.5 s (``docs/measurements/deploy-rounds.json``). Those
waits are polling only, and Flower has no setting for them (the SuperExec's has one, which ``fedlora.deploy``
sets). This entry point runs Flower's own SuperNode with that module's ``time.sleep`` capped at ``PULL_S``; each
idle SuperNode then sends ~1/PULL_S small pull requests a second instead of 1/3. If the installed flwr's loop is
not the one measured (its sleeps changed), it runs unchanged and says so.

  python -m fedlora.supernode_polling --superlink HOST:PORT ...   # the arguments of flower-supernode
"""

from __future__ import annotations

import inspect
import sys
import time
from types import ModuleType
from typing import Any

PULL_S = 0.2
MEASURED_SLEEPS = ("time.sleep(3)", "time.sleep(0.5)")  # flwr 1.42.0's polling waits in that module


class CappedSleep:
    """The ``time`` module, but ``sleep`` waits at most ``cap`` s."""

    def __init__(self, cap: float):
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def cap_polling(module: ModuleType, cap: float = PULL_S) -> bool:
    """Cap ``module``'s sleeps at ``cap`` s if every sleep in it is one of the measured polling waits."""
    source = inspect.getsource(module)
    sleeps = source.count("sleep(")
    if sleeps == 0 or sleeps != sum(source.count(s) for s in MEASURED_SLEEPS):
        return False
    module.time = CappedSleep(cap)  # type: ignore[attr-defined]
    return True


def main() -> int:
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    if not cap_polling(start_client_internal):
        print(
            f"fedlora: this flwr's SuperNode loop is not the one measured (its sleeps are not {MEASURED_SLEEPS}); "
            "running it unchanged, with its own waits between pulls",
            file=sys.stderr,
        )
    sys.argv[0] = "flower-supernode"
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())

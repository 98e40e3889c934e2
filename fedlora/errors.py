"""Errors shared across fedlora, in a module that imports nothing (so anything may raise them)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key is unknown, ill-typed or out of range; the message names it."""


class RunFolderError(ValueError):
    """A file of a run folder is missing or damaged; the message names the file and what is wrong with it."""

    @classmethod
    def missing(cls, path: object, hint: str = "") -> RunFolderError:
        return cls(f"{path} is missing" + (f" ({hint})" if hint else ""))

    @classmethod
    def damaged(cls, path: object, reason: str) -> RunFolderError:
        return cls(f"{path} is damaged: {reason}")

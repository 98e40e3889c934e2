"""Errors shared across fedlora, in a module that imports nothing (so anything may raise them)."""


class ConfigError(ValueError):
    """A config key is unknown, ill-typed or out of range; the message names it."""

"""Flower ServerApp for fedlora: strategy wiring, per-round logging, final outputs."""

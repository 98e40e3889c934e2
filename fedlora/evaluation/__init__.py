"""Leakage and quality measurement, sample generation, figures."""

"""Benchmarks: every speed figure pass-jax reports comes from here."""

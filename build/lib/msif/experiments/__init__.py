"""Experiments: the registry (:mod:`.registry`) and one module per built-in experiment (loader, model, size checks)."""

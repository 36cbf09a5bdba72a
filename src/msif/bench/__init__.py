"""Benchmarks, not tests: each writes its tables (CSV, a JSON sidecar, a figure) under ``results/bench/``.

``python -m msif.bench.solvers`` (``make bench``): every solver against the exact scores on a config's model;
``python -m msif.bench.scale`` (``make bench-scale``): the same against a tight CG where no dense Hessian fits;
``python -m msif.bench.peers`` (``make bench-peers``): msif beside captum, dattri, pyDVL, kronfluence and TRAK.
:mod:`msif.bench.base` and :mod:`msif.bench.measure` are what they share; ``--smoke`` runs each in seconds.
"""

"""msif: multi-stage influence functions, traced from a finetuned prediction back to pretraining data.

The sign convention (method.md, one everywhere): a score is the *removal effect*
``score[t, i] = f_t(trained without z_i) - f_t(trained with all)``, predicted to first order,
with the 1/n in it, stored with shape ``(n_test, n_pretrain)``.

The public API is imported lazily (``import msif`` stays light, so the Snakefile parses fast):
``msif.multi_stage_influence``, ``msif.Plugin``, ``msif.TwoStageData``, ``msif.TwoStageModel``, ...
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

SCORE_CONVENTION = (
    "removal effect: score[t, i] ~= test_loss_t(without z_i) - test_loss_t(with all), "
    "first order, 1/n included, shape (n_test, n_pretrain); positive = proponent (helpful)"
)

_API = {
    "SolveArguments": "msif.arguments",
    "Split": "msif.task.data",
    "TwoStageData": "msif.task.data",
    "TwoStageModel": "msif.task.models",
    "mlp_model": "msif.task.models",
    "load_fashion_mnist": "msif.experiments.datasets",
    "load_mnist5k": "msif.experiments.datasets",
    "PretrainObjective": "msif.task.objectives",
    "FinetuneObjective": "msif.task.objectives",
    "minimize": "msif.task.training",
    "multi_stage_influence": "msif.influence.multi_stage",
    "MultiStageResult": "msif.influence.multi_stage",
    "Solve": "msif.core.solvers",
    "solve": "msif.core.solvers",
    "Plugin": "msif.experiments.plugin",
    "Experiment": "msif.experiments.registry",
    "retrain_both_stages": "msif.validation.retraining",
    "removal_sets": "msif.validation.metrics",
    "correlations": "msif.validation.metrics",
}

__all__ = ["SCORE_CONVENTION", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'msif' has no attribute {name!r}")

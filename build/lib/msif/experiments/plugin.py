"""What an experiment plug-in provides: its data loader, its model builder and, optionally, size checks of its config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from msif.task.data import TwoStageData
    from msif.task.models import TwoStageModel


class PluginError(ValueError):
    """A plug-in could not be found, raised, or returned something of the wrong kind or shape."""


@dataclass(frozen=True)
class Plugin:
    """How an experiment loads its data and builds its model, each from the whole config.

    ``load_data(config) -> TwoStageData`` (inputs of any shape; labels 0..C-1 per stage);
    ``build_model(config, data) -> TwoStageModel`` (body W, pretraining head U, finetuning head Θ);
    ``check_sizes(config)`` raises :class:`msif.errors.ConfigError` on sizes the data cannot hold (optional).
    """

    name: str
    load_data: Callable[[dict], TwoStageData]
    build_model: Callable[[dict, TwoStageData], TwoStageModel]
    check_sizes: Callable[[dict], None] | None = None

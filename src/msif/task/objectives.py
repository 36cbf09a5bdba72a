"""The two objectives of method.md, as functions of one flat parameter vector each.

    L_pt(W, U) = 1/n Σ_i c_i l(z_i; W, U) + λ_pt/2 ‖(W, U)‖²          (c_i = 1, or 0 for a removed z_i)
    L_ft(Θ; W) = 1/m Σ_j l(x_j; Θ, W) + λ_ft/2 ‖Θ‖²
    Scenario "fixed":   minimise L_ft over Θ with W = W_pt.
    Scenario "updated": minimise L_ft(Θ, W) + α/2 ‖W − W_pt‖² over x = (Θ, W).

Per-example losses are unreduced; the objectives own the mean and its 1/n. A removed example
keeps the denominator n, so retraining realises exactly the ε = −1/n that a score predicts.
"""

from __future__ import annotations

import re

import torch

from msif.core.stage import Block, Stage
from msif.task.data import Split
from msif.task.models import TwoStageModel

SCENARIOS = ("fixed", "updated")
SCENARIO_PATTERN = r"^(fixed|updated(@[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?)?)$"


def parse_scenario(name: str, alpha: float) -> tuple[str, float]:
    """``fixed``, ``updated`` (proximal strength ``alpha``, finetune.alpha) or ``updated@α`` (its own α) → (kind, α).

    ``updated@α`` names let one run compare several α over the same pretraining (the paper's protocol).
    """
    kind, _, own = name.partition("@")
    if kind not in SCENARIOS or not re.match(SCENARIO_PATTERN, name):
        raise ValueError(f"scenario={name!r}: allowed 'fixed', 'updated' or 'updated@<alpha>' (e.g. updated@0.1)")
    return kind, float(own) if own else alpha


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of examples whose largest logit is their label; NaN where the outputs are not class logits."""
    if logits.ndim != 2 or y.ndim != 1 or y.dtype.is_floating_point or len(y) == 0:
        return float("nan")
    return float((logits.argmax(dim=1) == y).double().mean())


def pretrain_losses(model: TwoStageModel, w: torch.Tensor, u: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example pretraining losses ``l(z_i; W, U)``, unreduced, shape (n,); the target is ``model.pt_target(x, y)``."""
    return model.pt_loss(model.pt_logits(w, u, x), model.pt_target(x, y))


def finetune_losses(model: TwoStageModel, w: torch.Tensor, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example finetuning (and test) losses ``l(x_j; Θ, W)``, unreduced, shape (m,)."""
    return model.ft_loss(model.ft_logits(w, theta, x), y)


class PretrainObjective:
    """``L_pt(θ)`` with ``θ = (W, U)`` flat; ``weights`` c_i (default 1) multiply each loss term."""

    def __init__(self, model: TwoStageModel, data: Split, l2: float, weights: torch.Tensor | None = None):
        self.model, self.data, self.l2 = model, data, l2
        self.n = len(data)
        self.weights = weights
        self.p_w = model.w_spec.numel

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return params[: self.p_w], params[self.p_w :]

    def accuracy(self, params: torch.Tensor, data: Split) -> float:
        """Pretraining-task accuracy of ``(W, U) = params`` on ``data``, against ``model.pt_target``: NaN when that is
        not a class label (``pretrain.objective: reconstruct``: U's outputs reconstruct the inputs, they are not logits)."""
        with torch.no_grad():
            return accuracy(self.model.pt_logits(*self.split(params), data.x), self.model.pt_target(data.x, data.y))

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        w, u = self.split(params)
        losses = pretrain_losses(self.model, w, u, self.data.x, self.data.y)
        if self.weights is not None:
            losses = losses * self.weights
        return losses.sum() / self.n + 0.5 * self.l2 * params.pow(2).sum()


class FinetuneObjective:
    """The finetuning objective of one scenario, on ``x = Θ`` ("fixed") or ``x = (Θ, W)`` ("updated")."""

    def __init__(self, model: TwoStageModel, data: Split, l2: float, w_pt: torch.Tensor, scenario: str, alpha: float):
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario={scenario!r}: allowed {list(SCENARIOS)}")
        if scenario == "updated" and not alpha > 0:
            raise ValueError(f"finetune.alpha={alpha}: scenario 'updated' needs alpha > 0")
        self.model, self.data, self.l2, self.w_pt = model, data, l2, w_pt
        self.scenario, self.alpha = scenario, alpha
        self.p_theta = model.theta_spec.numel

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Θ, W) of a finetuning parameter vector; W is W_pt when it is fixed."""
        if self.scenario == "fixed":
            return params, self.w_pt
        return params[: self.p_theta], params[self.p_theta :]

    def initial(self, theta0: torch.Tensor) -> torch.Tensor:
        return theta0 if self.scenario == "fixed" else torch.cat([theta0, self.w_pt])

    def accuracy(self, params: torch.Tensor, data: Split) -> float:
        """Finetuning-task accuracy of ``params`` (Θ, or (Θ, W)) on ``data``."""
        theta, w = self.split(params)
        with torch.no_grad():
            return accuracy(self.model.ft_logits(w, theta, data.x), data.y)

    def loss(self, theta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``L_ft(Θ; W) = 1/m Σ_j l(x_j; Θ, W) + λ_ft/2 ‖Θ‖²`` (no proximal term)."""
        losses = finetune_losses(self.model, w, theta, self.data.x, self.data.y)
        return losses.mean() + 0.5 * self.l2 * theta.pow(2).sum()

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        theta, w = self.split(params)
        value = self.loss(theta, w)
        if self.scenario == "updated":
            value = value + 0.5 * self.alpha * (w - self.w_pt).pow(2).sum()
        return value


def test_losses(ft: FinetuneObjective, params: torch.Tensor, test: Split) -> torch.Tensor:
    """``f_t(Θ, W)`` of every test example at finetuning variables ``params`` under ``ft`` (its ``W_pt`` when W is fixed)."""
    theta, w = ft.split(params)
    return finetune_losses(ft.model, w, theta, test.x, test.y)


def stage_of(objective: PretrainObjective | FinetuneObjective) -> Stage:
    """An objective as a :class:`msif.core.stage.Stage`: ``L(θ) = 1/N Σ_i c_i ℓ(outputs(θ)_i, y_i) + r(θ)`` with its parameter blocks."""
    if isinstance(objective, PretrainObjective):
        model, pt = objective.model, objective
        target = model.pt_target(pt.data.x, pt.data.y)  # the labels, or the inputs of a reconstruction
        return Stage(pt, pt.data.x, target, pt.weights, pt.n, lambda p, x: model.pt_logits(*pt.split(p), x), model.pt_loss,
                   lambda p: 0.5 * pt.l2 * p.pow(2).sum(),
                   (Block("body", model.body, model.w_spec, 0), Block("pt_head", model.pt_head, model.u_spec, pt.p_w)))
    if isinstance(objective, FinetuneObjective):
        model, ft = objective.model, objective

        def outputs(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            theta, w = ft.split(p)
            return model.ft_logits(w, theta, x)

        def reg(p: torch.Tensor) -> torch.Tensor:
            theta, w = ft.split(p)
            out = 0.5 * ft.l2 * theta.pow(2).sum()
            return out + 0.5 * ft.alpha * (w - ft.w_pt).pow(2).sum() if ft.scenario == "updated" else out

        blocks = [Block("ft_head", model.ft_head, model.theta_spec, 0)]
        if ft.scenario == "updated":
            blocks.append(Block("body", model.body, model.w_spec, ft.p_theta))
        return Stage(ft, ft.data.x, ft.data.y, None, len(ft.data), outputs, model.ft_loss, reg, tuple(blocks))
    raise TypeError(f"no curvature decomposition for {type(objective).__name__}: allowed PretrainObjective, FinetuneObjective")

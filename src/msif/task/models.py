"""Two-stage models as pure functions of flat parameter vectors.

A :class:`TwoStageModel` holds three ``nn.Module`` templates — the shared body ``W``, the
pretraining head ``U`` and the finetuning head ``Θ`` — but every computation goes through
``torch.func.functional_call`` on flat vectors, so Hessians, solvers and per-example gradients
see plain tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from msif.core.params import ParamSpec

ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "gelu": nn.GELU}
PRETRAIN_OBJECTIVES = ("classify", "reconstruct")  # pretrain.objective of the MLP body (mlp_model)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy, unreduced: the default loss of both stages."""
    return F.cross_entropy(logits, y, reduction="none")


def squared_error(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example mean squared error over the d output coordinates, unreduced (shape (N,)).

    Its Hessian in the outputs is ``2/d · I`` for every example (the GGN's and EK-FAC's output factor).
    """
    return (outputs - target).pow(2).flatten(1).mean(1)


def class_labels(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The pretraining target of a classifier: the labels ``y`` (the default ``pt_target``)."""
    return y


def flat_inputs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The pretraining target of a reconstruction: the inputs themselves, flattened to (N, d)."""
    return x.flatten(1)


class TwoStageModel:
    """Body ``W`` shared by a pretraining head ``U`` and a finetuning head ``Θ``.

    ``pt_logits(w, u, x)`` = U(W(x)); ``ft_logits(w, theta, x)`` = Θ(W(x)). All parameters are
    flat vectors; :meth:`init_params` draws them from the modules' default initialisation.
    ``pt_loss`` / ``ft_loss`` map (outputs, targets) to **unreduced** per-example losses (default
    cross-entropy); msif owns the mean and the 1/n. ``pt_target(x, y)`` is what ``pt_loss`` compares
    the pretraining outputs with: the labels (default, :func:`class_labels`) or, for a reconstruction
    objective, the flattened inputs (:func:`flat_inputs`).
    """

    def __init__(self, body: nn.Module, pt_head: nn.Module, ft_head: nn.Module,
                 pt_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy,
                 ft_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy,
                 pt_target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = class_labels):
        self.body, self.pt_head, self.ft_head = body, pt_head, ft_head
        self.pt_loss, self.ft_loss, self.pt_target = pt_loss, ft_loss, pt_target
        self.w_spec, self.u_spec, self.theta_spec = (ParamSpec.of(m) for m in (body, pt_head, ft_head))

    def features(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.body, self.w_spec.unflatten(w), (x,))

    def representation(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One feature vector per input (N, D) for similarity baselines: the body's output, flattened."""
        return self.features(w, x).flatten(1)

    def pt_logits(self, w: torch.Tensor, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.pt_head, self.u_spec.unflatten(u), (self.features(w, x),))

    def ft_logits(self, w: torch.Tensor, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.ft_head, self.theta_spec.unflatten(theta), (self.features(w, x),))

    def init_params(self, seed: int, dtype: torch.dtype, device: torch.device):
        """Fresh (w, u, theta) from the modules' default initialisation under ``seed``."""
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            for m in (self.body, self.pt_head, self.ft_head):
                for layer in m.modules():
                    if hasattr(layer, "reset_parameters"):
                        layer.reset_parameters()
        finally:
            torch.random.set_rng_state(gen_state)
        return tuple(ParamSpec.flatten(m).to(dtype=dtype, device=device) for m in (self.body, self.pt_head, self.ft_head))


def mlp_model(in_dim: int, hidden: list[int], n_pt_classes: int, n_ft_classes: int, activation: str = "tanh",
              pretrain_objective: str = "classify") -> TwoStageModel:
    """An MLP body ``in_dim → hidden[0] → … → hidden[-1]`` with linear heads for both stages.

    ``pretrain_objective`` (pretrain.objective): ``classify`` — U maps the features to ``n_pt_classes``
    logits under cross-entropy; ``reconstruct`` — U decodes the features back to the ``in_dim`` inputs
    under :func:`squared_error` (an autoencoder; the labels are not used).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"model.activation={activation!r}: allowed {sorted(ACTIVATIONS)}")
    if pretrain_objective not in PRETRAIN_OBJECTIVES:
        raise ValueError(f"pretrain.objective={pretrain_objective!r}: allowed {list(PRETRAIN_OBJECTIVES)}")
    if not hidden:
        raise ValueError("model.hidden must list at least one layer width")
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    if pretrain_objective == "reconstruct":
        return TwoStageModel(nn.Sequential(*layers), nn.Linear(width, in_dim), nn.Linear(width, n_ft_classes),
                             pt_loss=squared_error, pt_target=flat_inputs)
    return TwoStageModel(nn.Sequential(*layers), nn.Linear(width, n_pt_classes), nn.Linear(width, n_ft_classes))

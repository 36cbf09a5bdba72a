"""Aligning other libraries' influence scores to msif's one convention (method.md), and the model they see.

Pure functions, importable without any peer installed (the tests check them on synthetic numbers).
msif's score is the removal effect with 1/n in it, shape (n_test, n_train):

    score[t, i] = ∇f_tᵀ (H + δI)⁻¹ ∇l(z_i) / n         H: Hessian of the *mean* training loss,
                                                       δ = λ_L2 + λ  (L2 term of L_pt plus the damping)

msif's Hessian is that of ``L_pt = mean loss + λ_L2/2 ‖θ‖²``; a peer differentiates only the loss it
is given, so the L2 term goes into its damping (:func:`total_damping`). What each peer returns:

- ``inner`` (pyDVL, dattri, kronfluence): ``∇f_tᵀ (H + δ_peer I)⁻¹ ∇l(z_i)`` with H of the *mean* loss
  (pyDVL's ``regularization``, dattri's ``regularization``, kronfluence's ``damping_factor`` on its
  mean-normalised factors are δ itself) → ``score = raw / n``;
- ``summed`` (captum, given a summed loss): ``∇f_tᵀ (n H + hessian_reg I)⁻¹ ∇l(z_i)`` with
  ``hessian_reg = n·δ`` → ``score = raw`` (the 1/n comes out of the summed Hessian);
- ``lissa_dattri``: dattri's LiSSA iterates ``x ← v + (1 − d) x − H x / s`` and returns ``x / s``, i.e.
  ``(H + d·s I)⁻¹ v``: its ``damping`` is ``δ / s``;
- TracIn (one checkpoint, learning rate 1): ``∇f_t · ∇l(z_i)``, no Hessian → ``raw / n`` (compare ranks only);
- TRAK: a random-projection, margin-output score in its own units (compare ranks only).

None of the peers adds a minus sign: a positive raw score means removing z_i raises f_t, the sign of
msif's removal effect (Koh & Liang's ``I_up,loss = −n · score``). Layout: dattri and traker return
(n_train, n_test); the others (n_test, n_train).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from msif.task.models import TwoStageModel

SCALES = ("inner", "summed", "grad_dot", "trak")
LAYOUTS = ("test_train", "train_test")


def total_damping(l2: float, damping: float) -> float:
    """``δ = λ_L2 + λ``: msif's Hessian holds the L2 term of L_pt, a peer's does not — it goes into the peer's damping."""
    if l2 < 0 or damping < 0:
        raise ValueError(f"l2={l2}, damping={damping}: both must be >= 0")
    return l2 + damping


def peer_damping(library: str, method: str, delta: float, n: int, lissa_scale: float | None = None) -> float:
    """The value to pass as the peer's damping argument so that it solves ``(H_mean + δI) x = b``.

    captum: ``hessian_reg`` is on the summed Hessian (``n·δ``); dattri LiSSA: ``δ / scaling``;
    everyone else (pyDVL ``regularization``/``hessian_regularization``, dattri ``regularization``/``damping``
    (EK-FAC), kronfluence ``damping_factor``): δ.
    """
    if library == "captum":
        return n * delta
    if library == "dattri" and method == "lissa":
        if not lissa_scale or lissa_scale <= 0:
            raise ValueError(f"dattri LiSSA: scaling={lissa_scale} must be > 0")
        return delta / lissa_scale
    if library in ("pydvl", "dattri", "kronfluence", "msif"):
        return delta
    raise ValueError(f"library={library!r}: allowed captum, dattri, pydvl, kronfluence, msif")


def to_removal_effect(raw: torch.Tensor, n: int, scale: str, layout: str) -> torch.Tensor:
    """A peer's raw score matrix in msif's convention: (n_test, n_train), removal effect with 1/n (see module doc)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: allowed {list(LAYOUTS)}")
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: allowed {list(SCALES)}")
    out = raw.detach().to(torch.float64)
    if layout == "train_test":
        out = out.T
    if scale in ("inner", "grad_dot"):
        out = out / n
    return out.contiguous()


# ---------------------------------------------------------------------------------------------
# The model the peers see


class PeerModel(nn.Module):
    """The trained pretraining model as an ``nn.Module`` whose parameters are θ = (W, U), for the peers.

    Without ``theta``: ``x ↦ U(W(x))``, the pretraining logits (the single-stage problem). With the
    finetuned head ``theta`` (a buffer, not a parameter): ``x ↦ [U(W(x)) | Θ(W'(x))]`` where
    ``W' = W + (W_ft − W_pt)`` (``w_shift``, scenario "updated"; W' = W when None) — labels below
    ``c_pt`` pick the pretraining loss, the others the finetuned test loss (label − c_pt), see
    :func:`routed_cross_entropy`. Gradients of a finetuned test loss w.r.t. (W, U) are then
    ``[∇_W f; 0]`` at the finetuned point: msif's ``single_stage`` baseline, expressed as a peer's test loss.
    """

    def __init__(self, model: TwoStageModel, pt_params: torch.Tensor, c_pt: int, theta: torch.Tensor | None = None,
                 w_shift: torch.Tensor | None = None):
        super().__init__()
        p_w = model.w_spec.numel
        self.body, self.pt_head = copy.deepcopy(model.body), copy.deepcopy(model.pt_head)
        with torch.no_grad():
            for module, spec, flat in ((self.body, model.w_spec, pt_params[:p_w]), (self.pt_head, model.u_spec, pt_params[p_w:])):
                module.to(pt_params.dtype)
                values = spec.unflatten(flat.detach())
                for name, p in module.named_parameters():
                    p.copy_(values[name])
        self.c_pt = c_pt
        # hidden from named_modules()/parameters(): the peers' hooks and parameter lists see only W and U
        self._ft = (copy.deepcopy(model.ft_head).to(pt_params.dtype), copy.deepcopy(self.body), model.theta_spec, model.w_spec)
        self.register_buffer("theta", None if theta is None else theta.detach().clone())
        self.register_buffer("w_shift", None if w_shift is None else w_shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        pt = self.pt_head(h)
        if self.theta is None:
            return pt
        ft_head, shadow, theta_spec, w_spec = self._ft
        if self.w_shift is not None:
            shift = w_spec.unflatten(self.w_shift)
            h = functional_call(shadow, {n: p + shift[n] for n, p in self.body.named_parameters()}, (x,))
        return torch.cat([pt, functional_call(ft_head, theta_spec.unflatten(self.theta), (h,))], dim=1)

    def flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.parameters()])


def routed_cross_entropy(out: torch.Tensor, y: torch.Tensor, c_pt: int, reduction: str = "mean") -> torch.Tensor:
    """Per-example cross-entropy of :class:`PeerModel` outputs: ``y < c_pt`` on the first c_pt logits, else on the rest with ``y − c_pt``."""
    if out.shape[-1] == c_pt:
        per = F.cross_entropy(out, y, reduction="none")
    else:
        per_pt = F.cross_entropy(out[..., :c_pt], y.clamp(max=c_pt - 1), reduction="none")
        per_ft = F.cross_entropy(out[..., c_pt:], (y - c_pt).clamp(min=0), reduction="none")
        per = torch.where(y >= c_pt, per_ft, per_pt)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if reduction == "mean":
        return per.mean()
    raise ValueError(f"reduction={reduction!r}: allowed none, sum, mean")


@dataclass
class PeerProblem:
    """One single-stage problem as the peers see it: a model, training examples, query examples, δ."""

    name: str
    model: PeerModel
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    delta: float
    c_pt: int
    shifted: bool = False  # the query gradient is taken at W_ft ≠ W_pt (hook-based peers cannot see it)

    @property
    def n(self) -> int:
        return len(self.y_train)

    def loss(self, reduction: str = "mean"):
        return lambda out, y: routed_cross_entropy(out, y, self.c_pt, reduction)

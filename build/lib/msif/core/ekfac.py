"""EK-FAC: eigenvalue-corrected Kronecker-factored curvature for Linear and Conv2d layers.

For a layer with input patches ``a`` (bias: a trailing 1) and output gradients ``g``, the
per-example weight gradient is ``G = Σ_l g_l a_lᵀ`` (l: positions — one for a Linear on a vector,
the output pixels of a Conv2d). K-FAC (Martens & Grosse 2015; Grosse & Martens 2016 for conv)
approximates the layer's block of the Gauss–Newton/Fisher matrix by ``A ⊗ S`` with

    A = Σ_i w_i Σ_l a_il a_ilᵀ,      S = Σ_i w_i Σ_k Σ_l g_ikl g_iklᵀ,      w_i = c_i / N,

and EK-FAC (George et al. 2018) keeps the eigenbases ``Q_A``, ``Q_S`` but replaces the Kronecker
eigenvalues by the exact second moments of the gradients in that basis,

    Λ = Σ_i w_i Σ_k (Q_Sᵀ G_ik Q_A)²      (elementwise square),

which is the diagonal of the true GGN block in the Kronecker eigenbasis. ``k`` runs over the columns
of ``L_i`` with ``L_i L_iᵀ = ∇²_z ℓ(z_i, y_i)`` (the loss's output Hessian): ``g_ik`` is the output
gradient of the pseudo-loss ``L_ikᵀ z``, so the expectation over labels of the true Fisher is taken
exactly rather than sampled (for cross-entropy ``L_ik = √p_k (e_k − p)``, the Fisher of a label
``k ~ p``; Grosse et al. 2023 use this curvature for influence). Hence EK-FAC approximates the
**GGN**, also when ``influence.curvature = hessian``; the solvers' residual is taken against the
configured true curvature, so the approximation error is visible.

The inverse per layer, with the regulariser's (constant per layer) diagonal ``ρ`` and damping λ:

    (F̂ + ρI + λI)⁻¹ v = Q_S [(Q_Sᵀ V Q_A) / (Λ + ρ + λ)] Q_Aᵀ,     V = v as an (out, in[+1]) matrix.

Layers are independent (block-diagonal). Parameters of the stage outside a supported layer (other
module types, a Conv2d with groups ≠ 1, string padding or non-zero padding mode, weights shared
between modules) get the regulariser and damping only, ``x = v / (ρ + λ)``; they are listed in
``info['unsupported']``. Fitting takes two passes over the stage's examples, each one forward and
C (outputs per example) backward passes per batch; the fit is done once per stage and reused for
every right-hand side. Examples must be independent in a batch (no batch-norm in training mode).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from msif.core.layers import Layer, _layer_statistics, find_layers
from msif.core.stage import Stage

log = logging.getLogger(__name__)

CHUNK_ELEMENTS = 1 << 24  # largest block of rotated per-example gradients held at once in the eigenvalue correction


@dataclass
class EKFAC:
    """A fitted EK-FAC of one stage: per-layer eigenbases and corrected eigenvalues, plus the rest's diagonal."""

    layers: list[Layer]
    other: torch.Tensor
    other_reg: torch.Tensor
    info: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, stage: Stage, params: torch.Tensor, batch_size: int = 256) -> EKFAC:
        """Kronecker factors (pass 1), their eigenbases, then the eigenvalue correction (pass 2)."""
        t0 = time.perf_counter()
        layers, unsupported, other = find_layers(stage)
        reg = stage.reg_diagonal(params)
        dt = params.dtype
        a_fac = {id(la): torch.zeros(la.d, la.d, dtype=dt, device=params.device) for la in layers}
        s_fac = {id(la): torch.zeros(la.out, la.out, dtype=dt, device=params.device) for la in layers}

        def factors(layer: Layer, a: torch.Tensor, g: torch.Tensor, w: torch.Tensor, first_k: bool) -> None:
            if first_k:
                a_fac[id(layer)] += torch.einsum("n,nld,nle->de", w, a, a)
            s_fac[id(layer)] += torch.einsum("n,nlo,nlq->oq", w, g, g)

        _layer_statistics(stage, params, layers, batch_size, factors)
        for layer in layers:
            _, layer.qa = torch.linalg.eigh(a_fac[id(layer)])
            _, layer.qs = torch.linalg.eigh(s_fac[id(layer)])
            layer.eigenvalues = torch.zeros(layer.out, layer.d, dtype=dt, device=params.device)
            r = reg[layer.indices()]
            if not bool((r == r[0]).all()):
                raise ValueError(f"EK-FAC layer {layer.name}: the regulariser's diagonal varies inside the layer "
                                 f"({float(r.min())}..{float(r.max())}); it must be constant per layer")
            layer.reg = float(r[0])

        def correction(layer: Layer, a: torch.Tensor, g: torch.Tensor, w: torch.Tensor, _first_k: bool) -> None:
            g_rot, a_rot = g @ layer.qs, a @ layer.qa
            if g_rot.shape[1] == 1:  # one position (a Linear on a vector): (g aᵀ)² = g² (a²)ᵀ, one product, no per-example G
                layer.eigenvalues += (w[:, None] * g_rot[:, 0].square()).T @ a_rot[:, 0].square()
                return
            step = max(1, CHUNK_ELEMENTS // (layer.out * layer.d))  # per-example gradients (step, out, d) at a time
            for i in range(0, len(w), step):
                grad = torch.einsum("nlo,nld->nod", g_rot[i : i + step], a_rot[i : i + step])
                layer.eigenvalues += torch.einsum("n,nod->od", w[i : i + step], grad.square())

        _layer_statistics(stage, params, layers, batch_size, correction)
        fit = cls(layers, other.to(params.device), reg[other.to(params.device)])
        lam = [la.eigenvalues.min() + la.reg for la in layers]
        fit.info = {"layers": [la.name for la in layers], "unsupported": unsupported, "fit_passes": 2,
                    "fit_seconds": time.perf_counter() - t0,
                    "ekfac_min_eigenvalue": float(min(lam)) if lam else float("nan"),
                    "ekfac_max_eigenvalue": float(max(la.eigenvalues.max() + la.reg for la in layers)) if layers else float("nan")}
        if unsupported:
            log.warning("EK-FAC: parameters outside Linear/Conv2d layers get the regulariser and damping only: %s", unsupported)
        return fit

    def solve(self, b: torch.Tensor, damping: float) -> torch.Tensor:
        """``(F̂ + ρ + λI)⁻¹ B`` for B (p, t)."""
        x = torch.empty_like(b)
        for layer in self.layers:
            v = layer.gather(b)
            rot = layer.qs.T @ v @ layer.qa
            layer.scatter(layer.qs @ (rot / (layer.eigenvalues + layer.reg + damping)) @ layer.qa.T, x)
        if bool(self.other.any()):
            shifted = self.other_reg + damping
            if not bool((shifted > 0).all()):
                raise ValueError(f"EK-FAC: parameters {self.info.get('unsupported')} are outside supported layers and have "
                                 f"no regulariser; they need damping λ > 0 (influence.damping={damping})")
            x[self.other] = b[self.other] / shifted[:, None]
        return x

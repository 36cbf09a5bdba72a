"""Curvature-vector products on a flat parameter vector: Hessian (``torch.func``), generalised Gauss-Newton, dense
matrices of small operators, relative residuals and finiteness checks. Tensors only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.func import grad, jvp, vjp, vmap

Matvec = Callable[[torch.Tensor], torch.Tensor]



class NonFiniteError(ValueError):
    """A tensor that must be finite holds NaN/Inf; the message names where."""


def check_finite(what: str, x: torch.Tensor, labels: Sequence | torch.Tensor | None = None, axis: int = -1,
                 label_name: str = "columns") -> None:
    """Raise :class:`NonFiniteError` naming the entries along ``axis`` (or their ``labels``) holding NaN/Inf."""
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    axis = axis % x.ndim
    others = tuple(d for d in range(x.ndim) if d != axis)
    idx = torch.nonzero(bad.any(dim=others) if others else bad).flatten().tolist()
    names = [labels[i].item() if isinstance(labels, torch.Tensor) else labels[i] for i in idx] if labels is not None else idx
    raise NonFiniteError(f"{what}: non-finite (NaN/Inf) values in {label_name} {names[:20]}{' ...' if len(names) > 20 else ''}")


# ---------------------------------------------------------------------------------------------
# Curvature-vector products


def hvp(fun: Callable[[torch.Tensor], torch.Tensor], params: torch.Tensor) -> Matvec:
    """``V ↦ ∇²fun(params) V`` for V of shape (p,) or (p, t).

    Reverse-over-reverse with the gradient's graph built once: ``vjp(∇fun, params)`` linearises
    the gradient at ``params`` and each product is one backward pass through it (H is symmetric,
    so the VJP is the HVP).
    """
    _, vjp_fn = vjp(grad(fun), params.detach())

    def one(v: torch.Tensor) -> torch.Tensor:
        return vjp_fn(v)[0]

    return _columns(one)


def ggn_matvec(outputs: Callable[[torch.Tensor], torch.Tensor], outer: Callable[[torch.Tensor], torch.Tensor],
               params: torch.Tensor, extra: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Matvec:
    """Generalised Gauss–Newton of ``outer(outputs(θ)) + extra(θ)``: ``V ↦ Jᵀ ∇²outer(z) J V + ∇²extra V``.

    ``z = outputs(θ)`` (e.g. the logits of every example), ``J = ∂z/∂θ``, ``outer`` the loss as a
    function of ``z`` (e.g. the weighted mean cross-entropy; ``∇²outer`` is then block-diagonal over
    examples, ``diag(p) − ppᵀ`` for cross-entropy, and positive semi-definite), ``extra`` a term whose
    exact Hessian is kept (the L2 / proximal regulariser). One JVP, one output-space HVP and one VJP
    per column: the GGN is positive semi-definite where H may be indefinite (method.md).
    """
    params = params.detach()
    z, vjp_fn = vjp(outputs, params)
    _, out_vjp = vjp(grad(outer), z.detach())
    extra_mv = hvp(extra, params) if extra is not None else None

    def one(v: torch.Tensor) -> torch.Tensor:
        _, jv = jvp(outputs, (params,), (v,))
        out = vjp_fn(out_vjp(jv)[0])[0]
        return out + extra_mv(v) if extra_mv is not None else out

    return _columns(one)


COLUMN_CHUNK = 32  # columns per vectorised curvature product: memory ∝ chunk × the stage's activations, not × t


def _columns(one: Matvec) -> Matvec:
    """``one`` (a product with one vector) applied to every column of a (p, t) matrix, ``vmap``-ed over
    at most ``COLUMN_CHUNK`` columns at a time."""
    many = vmap(one, in_dims=1, out_dims=1)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        if v.ndim == 1:
            return one(v)
        k = COLUMN_CHUNK
        if v.shape[1] <= k:
            return many(v)
        return torch.cat([many(v[:, i : i + k]) for i in range(0, v.shape[1], k)], dim=1)

    return matvec


class _Counted:
    """A matvec that counts its products (one per column)."""

    def __init__(self, matvec: Matvec):
        self.matvec, self.count = matvec, 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.count += 1 if v.ndim == 1 else v.shape[1]
        return self.matvec(v)


@dataclass(frozen=True)
class MinibatchSampler:
    """Curvature products on random mini-batches of an objective's examples (for LiSSA).

    ``draw(generator)`` returns the ``matvec`` of the curvature of the objective restricted to one
    uniformly drawn mini-batch — mean loss over the batch plus the full regulariser, an unbiased
    estimate of the full curvature. ``fraction`` = batch size / number of examples: the cost of one
    mini-batch product relative to a full one.
    """

    draw: Callable[[torch.Generator], Matvec]
    fraction: float


# ---------------------------------------------------------------------------------------------
# Shared helpers


def dense_matrix(matvec: Matvec, p: int, like: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The (p, p) matrix of a symmetric ``matvec``, built column block by column block."""
    eye = torch.eye(p, dtype=like.dtype, device=like.device)
    cols = [matvec(eye[:, i : i + chunk]) for i in range(0, p, chunk)]
    h = torch.cat(cols, dim=1)
    return 0.5 * (h + h.T)


def relative_residual(matvec: Matvec, x: torch.Tensor, b: torch.Tensor, damping: float) -> torch.Tensor:
    """``‖(H + λI) x − b‖ / ‖b‖`` per column."""
    r = matvec(x) + damping * x - b
    return r.norm(dim=0) / b.norm(dim=0).clamp_min(torch.finfo(b.dtype).tiny)


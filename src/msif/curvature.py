"""Curvature: Hessian-vector products and inverse-HVP solvers on a ``matvec``.

Every solver solves ``(H + λ I) X = B`` for a right-hand-side matrix ``B`` of shape (p, t) — many
test examples at once — with ``H`` the Hessian of a **mean** objective and ``λ`` the damping
(method.md: the only damping unit in msif). Every solve returns its relative residual per column,
``‖(H + λI) x − b‖ / ‖b‖``, so a bad solve is visible, never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.func import grad, vjp, vmap

log = logging.getLogger(__name__)

Matvec = Callable[[torch.Tensor], torch.Tensor]
SOLVERS = ("exact", "cg")


@dataclass
class Solve:
    """Solution ``x`` (p, t), relative residual per column (t,), and what the solver saw."""

    x: torch.Tensor
    residual: torch.Tensor
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"max_residual": float(self.residual.max()), **self.info}


def hvp(fun: Callable[[torch.Tensor], torch.Tensor], params: torch.Tensor) -> Matvec:
    """``V ↦ ∇²fun(params) V`` for V of shape (p,) or (p, t).

    Reverse-over-reverse with the gradient's graph built once: ``vjp(∇fun, params)`` linearises
    the gradient at ``params`` and each product is one backward pass through it (H is symmetric,
    so the VJP is the HVP).
    """
    _, vjp_fn = vjp(grad(fun), params.detach())

    def one(v: torch.Tensor) -> torch.Tensor:
        return vjp_fn(v)[0]

    many = vmap(one, in_dims=1, out_dims=1)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return one(v) if v.ndim == 1 else many(v)

    return matvec


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


@dataclass
class Eigh:
    """Eigendecomposition of a dense symmetric curvature matrix (the exact solver's factorisation)."""

    values: torch.Tensor
    vectors: torch.Tensor

    @classmethod
    def of(cls, matvec: Matvec, p: int, like: torch.Tensor) -> Eigh:
        values, vectors = torch.linalg.eigh(dense_matrix(matvec, p, like))
        return cls(values, vectors)

    def solve(self, b: torch.Tensor, damping: float) -> torch.Tensor:
        shifted = self.values + damping
        if shifted.min() <= 0:
            raise ValueError(
                f"H + λI is not positive definite: smallest eigenvalue {float(self.values.min()):.3e}, "
                f"damping λ={damping}; raise the damping or the L2 term"
            )
        return self.vectors @ ((self.vectors.T @ b) / shifted[:, None])


def exact_solve(matvec: Matvec, b: torch.Tensor, damping: float = 0.0, eigh: Eigh | None = None) -> Solve:
    """The oracle: dense ``(H + λI)⁻¹ B`` through an eigendecomposition of H (small models only)."""
    b2 = b if b.ndim == 2 else b[:, None]
    eigh = eigh or Eigh.of(matvec, b2.shape[0], b2)
    x = eigh.solve(b2, damping)
    res = relative_residual(matvec, x, b2, damping)
    info = {"solver": "exact", "damping": damping, "min_eigenvalue": float(eigh.values.min()), "max_eigenvalue": float(eigh.values.max())}
    return Solve(x if b.ndim == 2 else x[:, 0], res, info)


def cg(matvec: Matvec, b: torch.Tensor, damping: float = 0.0, tol: float = 1e-10, max_iter: int = 1000) -> Solve:
    """Conjugate gradient on ``(H + λI) X = B``, one independent CG per column, batched.

    Stops a column when ``‖r‖/‖b‖ ≤ tol``. Negative curvature ``pᵀ(H+λI)p ≤ 0`` (H + λI not positive
    definite) stops that column and is reported in ``info['negative_curvature']``.
    """
    b2 = b if b.ndim == 2 else b[:, None]
    a = (lambda v: matvec(v) + damping * v) if damping else matvec
    x = torch.zeros_like(b2)
    r = b2.clone()
    p = r.clone()
    rs = (r * r).sum(0)
    bnorm = b2.norm(dim=0).clamp_min(torch.finfo(b2.dtype).tiny)
    active = rs.sqrt() / bnorm > tol
    negative = torch.zeros_like(active)
    it = 0
    while it < max_iter and bool(active.any()):
        ap = a(p)
        pap = (p * ap).sum(0)
        negative |= active & (pap <= 0)
        active &= pap > 0
        step = torch.where(active, rs / torch.where(active, pap, torch.ones_like(pap)), torch.zeros_like(rs))
        x += step * p
        r -= step * ap
        rs_new = (r * r).sum(0)
        active &= rs_new.sqrt() / bnorm > tol
        beta = torch.where(active, rs_new / rs.clamp_min(torch.finfo(rs.dtype).tiny), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
        it += 1
    res = relative_residual(matvec, x, b2, damping)
    info = {"solver": "cg", "damping": damping, "iterations": it, "hvps": it, "tol": tol,
            "converged": bool((res <= 10 * tol).all()), "negative_curvature": bool(negative.any())}
    if not info["converged"]:
        log.warning("CG did not converge: max relative residual %.3e after %d iterations (tol %.1e)", float(res.max()), it, tol)
    return Solve(x if b.ndim == 2 else x[:, 0], res, info)


def lanczos_extremes(matvec: Matvec, p: int, like: torch.Tensor, iters: int = 60, seed: int = 0) -> tuple[float, float]:
    """Estimates of the smallest and largest eigenvalue of H by ``iters`` Lanczos steps (full reorthogonalisation)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(p, generator=gen, dtype=like.dtype).to(like.device)
    q /= q.norm()
    qs, alphas, betas = [q], [], []
    beta, q_prev = 0.0, torch.zeros_like(q)
    for _ in range(min(iters, p)):
        w = matvec(q) - beta * q_prev
        alpha = float(w @ q)
        w -= alpha * q
        basis = torch.stack(qs, 1)
        w -= basis @ (basis.T @ w)
        alphas.append(alpha)
        beta = float(w.norm())
        if beta < 1e-12:
            break
        betas.append(beta)
        q_prev, q = q, w / beta
        qs.append(q)
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    off = torch.tensor(betas[: k - 1], dtype=torch.float64)
    t += torch.diag(off, 1) + torch.diag(off, -1)
    ev = torch.linalg.eigvalsh(t)
    return float(ev[0]), float(ev[-1])


def solve(name: str, matvec: Matvec, b: torch.Tensor, damping: float, options: dict | None = None, eigh: Eigh | None = None) -> Solve:
    """Dispatch to a solver by name (config ``influence.solvers``)."""
    options = options or {}
    if name == "exact":
        return exact_solve(matvec, b, damping, eigh=eigh)
    if name == "cg":
        out = cg(matvec, b, damping, tol=options.get("tol", 1e-10), max_iter=options.get("max_iter", 1000))
        lo, hi = lanczos_extremes(matvec, b.shape[0], b, iters=options.get("lanczos_iters", 60))
        out.info.update(min_eigenvalue=lo, max_eigenvalue=hi, eigenvalue_method="lanczos")
        return out
    raise ValueError(f"solver={name!r}: allowed {list(SOLVERS)}")

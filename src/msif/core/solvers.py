"""Curvature: curvature-vector products and inverse-HVP solvers on a ``matvec``.

Every solver solves ``(H + λ I) X = B`` for a right-hand-side matrix ``B`` of shape (p, t) — many
test examples at once — with ``H`` the curvature (Hessian, or its Gauss–Newton approximation) of a
**mean** objective and ``λ`` the damping (method.md: the only damping unit in msif). Every solve
returns a :class:`Solve` with the relative residual per column against the **true** curvature
``matvec`` (never against a solver's own approximation of it),

    residual_j = ‖(H + λI) x_j − b_j‖ / ‖b_j‖,

and in ``info``: ``solver``, ``damping``, ``hvps`` (curvature-vector products the solver itself used,
one per column of each ``matvec`` call, excluding the residual check), ``converged`` and
``non_finite_columns`` (columns whose ``x`` or curvature product ``Hx`` holds NaN/Inf — such a solve
never counts as converged).

Solvers (``SOLVERS``), one interface ``solver(matvec, B, damping, ...) -> Solve``:

- ``exact``   dense eigendecomposition of H (small models; the oracle);
- ``cg``      conjugate gradient on curvature-vector products;
- ``lissa``   stochastic Neumann series on mini-batch curvature products (Agarwal et al. 2017);
- ``arnoldi`` top-r eigenpairs of H by Arnoldi/Lanczos, inverse on that subspace (Schioppa et al. 2022);
- ``ekfac``   eigenvalue-corrected K-FAC (George et al. 2018), fitted on the model's Linear/Conv2d
  layers by :mod:`msif.core.ekfac`; here only its solve is used;
- ``pcg``     block CG preconditioned by that EK-FAC: converges to CG's answer (same residual test
  against the true curvature); its first iterate refines EK-FAC's solve, so a few iterations are far
  more accurate than as many of plain CG (whether it *converges* in fewer products depends on the model:
  on the scale CNN it needs more).

A solver name may name the two stages' solvers separately, ``<finetune>+<pretrain>`` (``cg+ekfac``:
CG for the finetuning stage, EK-FAC for pretraining); see :func:`stage_solvers`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from msif.arguments import OPTIONS, SOLVERS
from msif.core.products import Matvec, MinibatchSampler, _Counted, check_finite, dense_matrix, relative_residual

log = logging.getLogger(__name__)


class Factorisation(Protocol):
    """A fitted curvature approximation ``F̂`` that inverts ``F̂ + λI`` itself (:class:`msif.core.ekfac.EKFAC`)."""

    info: dict

    def solve(self, b: torch.Tensor, damping: float) -> torch.Tensor: ...


@dataclass
class Solve:
    """Solution ``x`` (p, t), relative residual per column (t,), and what the solver saw."""

    x: torch.Tensor
    residual: torch.Tensor
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"max_residual": float(self.residual.max()), **self.info}


def _finish(name: str, matvec: Matvec, x: torch.Tensor, b: torch.Tensor, squeeze: bool, damping: float, tol: float | None,
            info: dict, threshold: float | None = None) -> Solve:
    """Residual against the true matvec, non-finite columns, ``converged``; a warning when it is not.

    ``converged``: a finite solution whose every residual is ``≤ threshold`` (default ``tol``; with
    ``tol=None`` — a direct solve — finite is enough).
    """
    t0 = time.perf_counter()
    finite = torch.isfinite(x).all(dim=0)
    res = relative_residual(matvec, torch.where(finite, x, torch.zeros_like(x)), b, damping)
    res = torch.where(finite, res, torch.full_like(res, math.nan))
    bad = torch.nonzero(~torch.isfinite(res)).flatten().tolist()  # x, or the curvature product of x, is NaN/Inf
    threshold = threshold if threshold is not None else tol
    converged = not bad and (threshold is None or bool((res <= threshold).all()))
    info = {"solver": name, "damping": damping, **info, **({"tol": tol} if tol is not None else {}), "converged": converged,
            "non_finite_columns": bad, "residual_seconds": time.perf_counter() - t0}
    if bad:
        log.warning("%s: non-finite (NaN/Inf) solution or curvature product in columns %s", name, bad[:20])
    elif not converged:
        log.warning("%s did not converge: max relative residual %.3e (threshold %.1e)", name, float(res.max()), threshold)
    return Solve(x[:, 0] if squeeze else x, res, info)


def _as_matrix(b: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (b, False) if b.ndim == 2 else (b[:, None], True)


# ---------------------------------------------------------------------------------------------
# exact


@dataclass
class Eigh:
    """Eigendecomposition of a dense symmetric curvature matrix (the exact solver's factorisation)."""

    values: torch.Tensor
    vectors: torch.Tensor

    @classmethod
    def of(cls, matvec: Matvec, p: int, like: torch.Tensor) -> Eigh:
        values, vectors = torch.linalg.eigh(dense_matrix(matvec, p, like))
        return cls(values, vectors)

    def shifted(self, damping: float) -> torch.Tensor:
        """The eigenvalues of ``H + λI``; a ``ValueError`` unless all are positive."""
        shifted = self.values + damping
        if shifted.min() <= 0:
            raise ValueError(
                f"H + λI is not positive definite: smallest eigenvalue {float(self.values.min()):.3e}, "
                f"damping λ={damping}; raise the damping or the L2 term"
            )
        return shifted

    def solve(self, b: torch.Tensor, damping: float) -> torch.Tensor:
        return self.vectors @ ((self.vectors.T @ b) / self.shifted(damping)[:, None])

    def preconditioner(self, damping: float, dtype: torch.dtype = torch.float32) -> Callable[[torch.Tensor], torch.Tensor]:
        """``b ↦ (H + λI)⁻¹ b`` with the factors cast to ``dtype`` once (float32: half the memory traffic of the float64
        products, which bound their speed), the result in ``b``'s dtype. For iterations whose fixed point the exact
        float64 gradients set — a preconditioner changes their speed, never their limit."""
        vectors, shifted = self.vectors.to(dtype).contiguous(), self.shifted(damping).to(dtype)[:, None]
        return lambda b: (vectors @ ((vectors.T @ b.to(dtype)) / shifted)).to(b.dtype)


def exact_solve(matvec: Matvec, b: torch.Tensor, damping: float = 0.0, eigh: Eigh | None = None) -> Solve:
    """The oracle: dense ``(H + λI)⁻¹ B`` through an eigendecomposition of H (small models only)."""
    b2, squeeze = _as_matrix(b)
    hvps = 0 if eigh is not None else b2.shape[0]
    eigh = eigh or Eigh.of(matvec, b2.shape[0], b2)
    x = eigh.solve(b2, damping)
    info = {"hvps": hvps, "min_eigenvalue": float(eigh.values.min()), "max_eigenvalue": float(eigh.values.max())}
    return _finish("exact", matvec, x, b2, squeeze, damping, None, info)


# ---------------------------------------------------------------------------------------------
# cg


def cg(matvec: Matvec, b: torch.Tensor, damping: float = 0.0, tol: float = 1e-10, max_iter: int = 1000) -> Solve:
    """Conjugate gradient on ``(H + λI) X = B``, one independent CG per column, batched.

    Stops a column when ``‖r‖/‖b‖ ≤ tol``; ``converged`` when every column's true residual is
    ``≤ 10·tol``. Negative curvature ``pᵀ(H+λI)p ≤ 0`` (H + λI not positive definite) stops that
    column and is reported in ``info['negative_curvature']``.
    """
    b2, squeeze = _as_matrix(b)
    counted = _Counted(matvec)
    a = (lambda v: counted(v) + damping * v) if damping else counted
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
    info = {"iterations": it, "hvps": counted.count, "max_iter": max_iter, "negative_curvature": bool(negative.any())}
    return _finish("cg", matvec, x, b2, squeeze, damping, tol, info, threshold=10 * tol)


def block_cg(matvec: Matvec, b: torch.Tensor, damping: float = 0.0, tol: float = 1e-10, max_iter: int = 1000,
             precondition: Matvec | None = None) -> Solve:
    """Block (preconditioned) conjugate gradient on ``(H + λI) X = B``: every column searches one shared Krylov space.

    O'Leary (1980) with orthonormal, rank-revealing search blocks (Dubrulle 2001; Ji & Li 2017):

        Q = A P,   α = (PᵀQ)⁻¹ PᵀR,   X ← X + Pα,   R ← R − Qα,   Z = M⁻¹R,
        β = −(PᵀQ)⁻¹ QᵀZ,   P ← orth(Z + Pβ)   (over the columns not yet converged, each scaled to norm 1),

    ``A = H + λI``, ``M⁻¹`` = ``precondition`` (symmetric positive definite; the identity when None, then
    ``Z = R``). ``orth`` changes the basis of the new block, not its span, so the blocks stay A-conjugate.
    Each iteration costs one product per column of P (at most t), like :func:`cg`, but after k
    iterations every column is optimal (in the A-norm) over a space of dimension up to k·t of the
    Krylov space of ``M⁻¹A``, so it stops in fewer iterations when t is large or ``M ≈ A``. ``orth``
    keeps the left singular vectors whose singular value exceeds √ε of the largest (directions the
    residuals no longer add are dropped), so converged or linearly dependent columns cannot break it
    down. Stops when every column has ``‖r‖/‖b‖ ≤ tol`` (the unpreconditioned residual);
    ``converged`` as :func:`cg`. A block ``PᵀQ`` that is not positive definite (H + λI indefinite)
    stops it and is reported in ``info['negative_curvature']``.
    """
    b2, squeeze = _as_matrix(b)
    counted = _Counted(matvec)
    a = (lambda v: counted(v) + damping * v) if damping else counted
    m = precondition or (lambda v: v)
    x = torch.zeros_like(b2)
    r = b2.clone()
    bnorm = b2.norm(dim=0).clamp_min(torch.finfo(b2.dtype).tiny)
    active = r.norm(dim=0) / bnorm > tol
    p = _orth(m(r[:, active]) if bool(active.any()) else r[:, active])
    negative, it, widths = False, 0, []
    while it < max_iter and p.shape[1]:
        q = a(p)
        pq = p.T @ q
        chol, bad = torch.linalg.cholesky_ex(0.5 * (pq + pq.T))
        if bad:
            negative = True
            break
        alpha = torch.cholesky_solve(p.T @ r, chol)
        x += p @ alpha
        r -= q @ alpha
        widths.append(p.shape[1])
        it += 1
        active = r.norm(dim=0) / bnorm > tol
        if not bool(active.any()):
            break
        z = m(r[:, active])
        beta = -torch.cholesky_solve(q.T @ z, chol)
        p = _orth(z + p @ beta)
    info = {"iterations": it, "hvps": counted.count, "max_iter": max_iter, "negative_curvature": negative, "block": True,
            "first_block_width": widths[0] if widths else 0, "max_block_width": max(widths, default=0),
            "preconditioned": precondition is not None}
    return _finish("pcg" if precondition is not None else "cg", matvec, x, b2, squeeze, damping, tol, info, threshold=10 * tol)


def _orth(w: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the span of the columns of ``w`` (each scaled to norm 1 first),
    without the directions whose singular value is below √ε of the largest."""
    if not w.shape[1]:
        return w
    w = w / w.norm(dim=0).clamp_min(torch.finfo(w.dtype).tiny)
    u, sv, _ = torch.linalg.svd(w, full_matrices=False)
    return u[:, sv > sv[0] * torch.finfo(w.dtype).eps ** 0.5]


# ---------------------------------------------------------------------------------------------
# lissa


def lissa(matvec: Matvec, b: torch.Tensor, damping: float = 0.0, *, sampler: MinibatchSampler | None = None,
          scale: float | None = None, depth: int = 1000, repeats: int = 1, seed: int = 0, tol: float = 1e-2) -> Solve:
    """LiSSA (Agarwal et al. 2017, as used by Koh & Liang 2017): a stochastic truncated Neumann series,

        x₀ = b,   x_j = b + (I − (H_j + λI)/scale) x_{j−1}   (j = 1..depth),   X ≈ x_depth / scale,

    averaged over ``repeats`` independent recursions. ``H_j`` is the curvature on the j-th random
    mini-batch (``sampler.draw``); without a sampler it is the full ``matvec`` (a deterministic
    Neumann series). The recursion contracts only if ``scale > λ_max(H_j + λI)`` for every batch;
    the full-batch error then decays like ``(1 − (λ_min + λ)/scale)^depth``, so ill-conditioned H
    needs a depth of many times ``scale/(λ_min + λ)`` and the stochastic version keeps a variance
    floor. ``scale=None`` picks ``2·(λ_max + λ)`` from 20 Lanczos steps on the full matvec (counted in
    ``hvps``). Seeded by ``seed``; ``converged`` means every column's true residual is ``≤ tol``.
    """
    b2, squeeze = _as_matrix(b)
    counted = _Counted(matvec)
    if scale is None:
        _, hi = lanczos_extremes(counted, b2.shape[0], b2, iters=20, seed=seed)
        scale = 2.0 * (hi + damping)
    if not scale > 0:
        raise ValueError(f"lissa.scale={scale}: must be > 0 (and above the largest eigenvalue of H + λI)")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    steps = 0
    total = torch.zeros_like(b2)
    for _ in range(repeats):
        x = b2.clone()
        for _ in range(depth):
            mv = sampler.draw(gen) if sampler is not None else counted
            x = b2 + x - (mv(x) + damping * x) / scale
            steps += 1
            if not bool(torch.isfinite(x).all()):
                break
        total += x / scale
    x = total / repeats
    product_cols = steps * b2.shape[1]
    fraction = sampler.fraction if sampler is not None else 1.0
    info = {"hvps": counted.count + (product_cols if sampler is not None else 0), "scale": scale, "depth": depth,
            "repeats": repeats, "seed": seed, "minibatch_fraction": fraction,
            "full_hvp_equivalents": counted.count + (product_cols * fraction if sampler is not None else 0)}
    return _finish("lissa", matvec, x, b2, squeeze, damping, tol, info)


# ---------------------------------------------------------------------------------------------
# arnoldi / lanczos


def lanczos(matvec: Matvec, p: int, like: torch.Tensor, iters: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``iters`` Lanczos steps (Arnoldi on a symmetric matvec) with full reorthogonalisation.

    Returns the orthonormal Krylov basis ``Q`` (p, k), the tridiagonal ``T = QᵀHQ`` (k, k) and the
    last off-diagonal ``β_k`` (for Ritz residuals ``|β_k · u_last|``); ``k < iters`` on breakdown.
    """
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
        for _ in range(2):  # "twice is enough"
            w -= basis @ (basis.T @ w)
        alphas.append(alpha)
        beta = float(w.norm())
        if beta < 1e-12 or len(alphas) == min(iters, p):
            break
        betas.append(beta)
        q_prev, q = q, w / beta
        qs.append(q)
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=like.dtype))
    off = torch.tensor(betas[: k - 1], dtype=like.dtype)
    t += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.stack(qs[:k], 1), t.to(like.device), beta


def lanczos_extremes(matvec: Matvec, p: int, like: torch.Tensor, iters: int = 60, seed: int = 0) -> tuple[float, float]:
    """Estimates of the smallest and largest eigenvalue of H by ``iters`` Lanczos steps (full reorthogonalisation)."""
    _, t, _ = lanczos(matvec, p, like, iters, seed)
    if not bool(torch.isfinite(t).all()):
        return math.nan, math.nan
    ev = torch.linalg.eigvalsh(t.double().cpu())
    return float(ev[0]), float(ev[-1])


@dataclass
class LowRank:
    """Top-``rank`` eigenpairs of H (largest ``|eigenvalue|``) from Arnoldi/Lanczos: ``H ≈ V diag(values) Vᵀ``.

    ``solve`` inverts on that subspace only, ``x = V diag(1/(values + λ)) Vᵀ b`` (Schioppa et al.
    2022): the part of ``b`` outside the top-r eigenspace is dropped, so the residual is at least
    ``‖(I − VVᵀ) b‖ / ‖b‖`` — small only when the right-hand sides live in the top eigenspace.
    Fitted once per stage (``iters`` products), reused for every right-hand side.
    """

    values: torch.Tensor
    vectors: torch.Tensor
    info: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, matvec: Matvec, p: int, like: torch.Tensor, rank: int, iters: int, seed: int = 0) -> LowRank:
        if rank < 1 or iters < rank:
            raise ValueError(f"arnoldi: rank={rank}, iters={iters}; need 1 <= rank <= iters")
        counted, t0 = _Counted(matvec), time.perf_counter()
        q, t, beta = lanczos(counted, p, like, iters, seed)
        if not bool(torch.isfinite(t).all()):
            nan = torch.full((min(rank, t.shape[0]),), math.nan, dtype=like.dtype, device=like.device)
            return cls(nan, torch.full((p, len(nan)), math.nan, dtype=like.dtype, device=like.device),
                       {"hvps": counted.count, "rank": len(nan), "krylov_dim": int(q.shape[1]), "max_ritz_residual": math.nan})
        theta, u = torch.linalg.eigh(t)
        keep = torch.argsort(theta.abs(), descending=True)[:rank]
        values, vectors = theta[keep], q @ u[:, keep]
        ritz = (beta * u[-1, keep]).abs() / values.abs().clamp_min(torch.finfo(values.dtype).tiny)
        info = {"hvps": counted.count, "rank": len(keep), "krylov_dim": int(q.shape[1]),
                "ritz_values": [float(values.min()), float(values.max())], "max_ritz_residual": float(ritz.max()),
                "fit_seconds": time.perf_counter() - t0}
        return cls(values, vectors, info)

    def solve(self, b: torch.Tensor, damping: float) -> torch.Tensor:
        return self.vectors @ ((self.vectors.T @ b) / (self.values + damping)[:, None])


def arnoldi(matvec: Matvec, b: torch.Tensor, damping: float = 0.0, *, rank: int = 100, iters: int = 200, seed: int = 0,
            tol: float = 1e-2, fit: LowRank | None = None) -> Solve:
    """``(H + λI)⁻¹ B`` on the top-``rank`` eigenspace of H (:class:`LowRank`; fitted here unless ``fit`` is given).

    ``info['negative_curvature']``: a kept eigenvalue has ``value + λ ≤ 0``. ``converged``: the
    true residual of every column is ``≤ tol``.
    """
    b2, squeeze = _as_matrix(b)
    fit = fit or LowRank.fit(matvec, b2.shape[0], b2, rank, iters, seed)
    x = fit.solve(b2, damping)
    info = {**fit.info, "seed": seed, "negative_curvature": bool(((fit.values + damping) <= 0).any())}
    return _finish("arnoldi", matvec, x, b2, squeeze, damping, tol, info)


# ---------------------------------------------------------------------------------------------
# ekfac (the factorisation is fitted by msif.core.ekfac; the solve sees only its factors)


def ekfac_solve(matvec: Matvec, b: torch.Tensor, damping: float, factors: Factorisation, tol: float = 1e-2) -> Solve:
    """``(F̂ + λI)⁻¹ B`` with ``F̂`` a fitted EK-FAC (:class:`msif.core.ekfac.EKFAC`), residual against the true matvec."""
    b2, squeeze = _as_matrix(b)
    x = factors.solve(b2, damping)
    return _finish("ekfac", matvec, x, b2, squeeze, damping, tol, {"hvps": 0, **factors.info})


def pcg(matvec: Matvec, b: torch.Tensor, damping: float, factors: Factorisation, tol: float = 1e-10, max_iter: int = 1000) -> Solve:
    """Block CG on ``(H + λI) X = B`` preconditioned by ``M = F̂ + λI`` (a fitted EK-FAC, :class:`msif.core.ekfac.EKFAC`).

    Iteration 0's direction is the EK-FAC solve itself, so one iteration already gives the best
    multiple of it per column; further iterations correct what EK-FAC misses (cross-layer blocks,
    the Kronecker structure, and, with ``curvature: hessian``, the Hessian's non-GGN part).
    """
    out = block_cg(matvec, b, damping, tol=tol, max_iter=max_iter, precondition=lambda v: factors.solve(v, damping))
    out.info.update({k: v for k, v in factors.info.items() if k not in out.info})
    return out


# ---------------------------------------------------------------------------------------------

def solve(name: str, matvec: Matvec, b: torch.Tensor, damping: float, options=None, eigh: Eigh | None = None, *,
          sampler: MinibatchSampler | None = None, ekfac: Factorisation | Callable[[], Factorisation] | None = None,
          lanczos_iters: int = 60) -> Solve:
    """Dispatch to a solver by name (one of ``SOLVERS``): ``(H + λI) X = B`` with ``options`` that solver's options object.

    ``options``: e.g. :class:`msif.arguments.CGOptions` for ``cg`` (``None``: its defaults; ``exact`` has none).
    ``lissa`` uses ``sampler`` when given (mini-batch products), else the full matvec; ``ekfac``
    needs a fitted EK-FAC (or a zero-argument callable fitting one), since it sees layers, not a
    matvec; ``pcg`` needs it too, as its preconditioner. Every iterative solver also reports a Lanczos estimate of
    H's extreme eigenvalues (``lanczos_iters`` products, 0 to skip; not counted in ``hvps``).
    """
    check_finite("right-hand side B", b if b.ndim == 2 else b[:, None], label_name="columns")
    if name not in SOLVERS:
        raise ValueError(f"solver={name!r}: allowed {list(SOLVERS)}")
    if name == "exact":
        return exact_solve(matvec, b, damping, eigh=eigh)
    o = options if options is not None else OPTIONS[name]()
    if not isinstance(o, OPTIONS[name]):
        raise TypeError(f"solver={name!r} takes {OPTIONS[name].__name__} options, not {type(o).__name__}")
    if name == "cg":
        many = o.block and b.ndim == 2 and b.shape[1] > 1
        out = (block_cg if many else cg)(matvec, b, damping, tol=o.tol, max_iter=o.max_iter)
    elif name == "lissa":
        out = lissa(matvec, b, damping, sampler=sampler if o.batch_size is not None else None, scale=o.scale, depth=o.depth,
                    repeats=o.repeats, seed=o.seed, tol=o.tol)
    elif name == "arnoldi":
        out = arnoldi(matvec, b, damping, rank=o.rank, iters=o.iters, seed=o.seed, tol=o.tol)
    else:
        out = _factorised(name, matvec, b, damping, o, ekfac)
    if lanczos_iters:
        lo, hi = lanczos_extremes(matvec, b.shape[0], b, iters=lanczos_iters)
        out.info.update(min_eigenvalue=lo, max_eigenvalue=hi, eigenvalue_method="lanczos")
    return out


def _factorised(name: str, matvec: Matvec, b: torch.Tensor, damping: float, o, ekfac) -> Solve:
    """``ekfac`` (the factorisation's own solve) or ``pcg`` (block CG preconditioned by it)."""
    if ekfac is None:
        raise ValueError(f"solver={name!r} needs a fitted EK-FAC (msif.core.ekfac.EKFAC.fit on the stage's layers): "
                         "call it through msif.influence.stage_solve.stage_solve, or pass ekfac=")
    factors = ekfac() if callable(ekfac) else ekfac
    if name == "ekfac":
        return ekfac_solve(matvec, b, damping, factors, tol=o.tol)
    return pcg(matvec, b, damping, factors, tol=o.tol, max_iter=o.max_iter)

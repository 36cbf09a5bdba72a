"""Optimisation to a true minimum: full-batch L-BFGS (strong Wolfe), then Newton polishing; Newton–PCG from a warm start.

Influence functions are derivatives *at an optimum*; a score computed at a point with a
non-negligible gradient, or at a saddle, predicts nothing. :func:`minimize` therefore runs
L-BFGS to ``grad_tol`` and then a few Newton steps (CG on Hessian-vector products) with a
backtracking line search on the gradient norm, and reports the final gradient norm.

Retraining from a warm start (:mod:`msif.validation.retraining`, ``retraining.method: newton``) may
instead take :func:`minimize_from_warm_start`: Newton–PCG (:func:`newton_minimize`, preconditioned by
the Ritz pairs of the trained optimum's Hessian, :class:`SpectralPreconditioner`) to the same stopping
rule ``‖∇‖₂ ≤ grad_tol``, with a guard that hands the set back to :func:`minimize` from the same start
wherever Newton may have left the minimum L-BFGS reaches (see :func:`guard_reason`).

Gradients and Hessian-vector products here are plain ``torch.autograd`` (double backprop for the
products), never ``torch.func``: a process's first ``torch.func`` transform imports ``torch._dynamo``
(2–4 s), which every retraining job would pay for nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from msif.core.solvers import cg, lanczos

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training diverged or produced non-finite values."""


@dataclass
class Minimum:
    """Where a minimisation stopped. ``method``: ``lbfgs`` (L-BFGS, then ``newton_steps`` polishing steps) or
    ``newton`` (Newton–PCG: ``newton_steps`` steps, ``cg_iterations`` PCG iterations in all); ``guard``: why a
    Newton–PCG solve was handed back to L-BFGS (empty where it was not), and ``newton_gap`` then: how far apart
    the two landed, relative to how far L-BFGS moved (``‖x_L − x_N‖ / ‖x_L − x₀‖``; NaN where not compared)."""

    params: torch.Tensor
    value: float
    grad_norm: float
    lbfgs_iterations: int
    newton_steps: int
    method: str = "lbfgs"
    cg_iterations: int = 0
    guard: str = ""
    newton_gap: float = math.nan

    def summary(self) -> dict:
        return {"value": self.value, "grad_norm": self.grad_norm, "lbfgs_iterations": self.lbfgs_iterations, "newton_steps": self.newton_steps,
                "method": self.method, "cg_iterations": self.cg_iterations, "guard": self.guard, "newton_gap": self.newton_gap}


def gradient(fun: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``∇fun(x)`` by plain autograd (detached)."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(fun(x), x)
    return g.detach()


def value_grad_hvp(fun: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Callable]:
    """``(fun(x), ∇fun(x), V ↦ ∇²fun(x) V)`` by plain double backprop, V of shape (p,) or (p, t): the gradient's graph
    is built once and each product is one backward pass through it (no ``torch.func``: see the module's docstring)."""
    x = x.detach().requires_grad_(True)
    value = fun(x)
    (g,) = torch.autograd.grad(value, x, create_graph=True)

    def one(v: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(g, x, v, retain_graph=True)[0].detach()

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return one(v) if v.dim() == 1 else torch.stack([one(c) for c in v.unbind(1)], 1)

    return value.detach(), g.detach(), matvec


def lbfgs(fun: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, grad_tol: float, max_iter: int) -> tuple[torch.Tensor, int]:
    """Full-batch L-BFGS until ``max|∇fun| ≤ grad_tol``.

    On CPU: SciPy's L-BFGS-B (compiled, so the per-iteration overhead is negligible next to one
    forward/backward pass); on an accelerator: ``torch.optim.LBFGS`` with a strong-Wolfe line search.
    """
    if x0.device.type == "cpu":
        return _scipy_lbfgs(fun, x0, grad_tol, max_iter)
    return _torch_lbfgs(fun, x0, grad_tol, max_iter)


def _value_and_grad(fun: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    value = fun(x)
    if not torch.isfinite(value):
        raise TrainingError(f"objective became non-finite ({float(value.detach())}) during L-BFGS: training diverged")
    (g,) = torch.autograd.grad(value, x)
    if not torch.isfinite(g).all():
        raise TrainingError(f"gradient became non-finite (NaN/Inf in {int((~torch.isfinite(g)).sum())} of {g.numel()} entries) "
                            f"during L-BFGS at objective {float(value.detach()):.6g}")
    return value.detach(), g


def _scipy_lbfgs(fun, x0: torch.Tensor, grad_tol: float, max_iter: int) -> tuple[torch.Tensor, int]:
    import numpy as np
    from scipy.optimize import minimize as scipy_minimize

    dtype = x0.dtype

    def f(x: np.ndarray):
        value, g = _value_and_grad(fun, torch.from_numpy(x).to(dtype))
        return float(value), g.to(torch.float64).numpy()

    res = scipy_minimize(f, x0.detach().to(torch.float64).numpy(), jac=True, method="L-BFGS-B",
                         options={"maxiter": max_iter, "maxfun": 2 * max_iter, "maxcor": 50, "gtol": grad_tol, "ftol": 0.0, "maxls": 50})
    return torch.from_numpy(res.x).to(dtype), int(res.nit)


def _torch_lbfgs(fun, x0: torch.Tensor, grad_tol: float, max_iter: int) -> tuple[torch.Tensor, int]:
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=grad_tol,
                            tolerance_change=0.0, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value, g = _value_and_grad(fun, x)
        x.grad = g
        return value

    opt.step(closure)
    return x.detach(), int(opt.state[opt._params[0]].get("n_iter", 0))


def newton_polish(fun: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad_tol: float, max_steps: int = 8) -> tuple[torch.Tensor, int]:
    """Newton steps ``x ← x − t H⁻¹∇fun`` (CG on HVPs), halving t until ‖∇fun‖ decreases."""
    g = gradient(fun, x)
    steps = 0
    for _ in range(max_steps):
        if g.norm() <= grad_tol:
            break
        sol = cg(value_grad_hvp(fun, x)[2], -g, tol=1e-12, max_iter=4 * x.numel())
        if sol.info["negative_curvature"]:
            log.warning("Newton polishing met negative curvature: the point may be a saddle")
            break
        t = 1.0
        while t > 1e-4:
            x_new = x + t * sol.x
            g_new = gradient(fun, x_new)
            if g_new.norm() < g.norm():
                break
            t /= 2
        else:
            break
        x, g = x_new, g_new
        steps += 1
    return x, steps


def minimize(fun: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, grad_tol: float = 1e-10, max_iter: int = 5000, newton_steps: int = 8) -> Minimum:
    """Minimise ``fun`` from ``x0`` until ``‖∇fun‖₂ ≤ grad_tol``; checks finiteness.

    L-BFGS stops when ``max|∇fun| ≤ grad_tol/√p`` (which implies the ℓ2 target); Newton polishing
    takes over only where L-BFGS stalled above it.
    """
    x, iters = lbfgs(fun, x0, grad_tol / x0.numel() ** 0.5, max_iter)
    x, steps = newton_polish(fun, x, grad_tol, newton_steps)
    g = gradient(fun, x)
    with torch.no_grad():
        value = float(fun(x))
    if not (torch.isfinite(x).all() and torch.isfinite(g).all()):
        raise TrainingError("training produced non-finite parameters or gradients")
    out = Minimum(x, value, float(g.norm()), iters, steps)
    if out.grad_norm > 100 * grad_tol:
        log.warning("minimisation stopped at gradient norm %.3e > target %.1e", out.grad_norm, grad_tol)
    return out


# ---------------------------------------------------------------------------------------------
# Newton–PCG from a warm start (retraining, ``retraining.method: newton``): true Hessian-vector products at
# the current point, a spectral preconditioner built once per job at the trained optimum, an Armijo line
# search, and a guard that hands the solve back to L-BFGS (the protocol of :func:`minimize`).


@dataclass
class SpectralPreconditioner:
    """``M⁻¹ b = Y diag(1/|λ|) Yᵀ b + (b − Y Yᵀ b) / c`` ≈ ``H₀⁻¹ b``.

    ``(λ, Y)``: the converged Ritz pairs of a stage's Hessian ``H₀`` at the trained optimum; ``c``: the bulk of
    its spectrum (the median Ritz value; an L2 term puts most eigenvalues near λ_L2). Only a preconditioner:
    every Newton system is solved with the Hessian at the current point.
    """

    vectors: torch.Tensor
    values: torch.Tensor
    bulk: float

    def __call__(self, b: torch.Tensor) -> torch.Tensor:
        y = self.vectors.T @ b
        return self.vectors @ (y / self.values.abs()) + (b - self.vectors @ y) / self.bulk

    @classmethod
    def of(cls, fun: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iters: int = 200) -> SpectralPreconditioner:
        """Ritz pairs of ``∇²fun(x)`` from ``iters`` Lanczos steps, those with residual ``≤ 1%`` of ``|θ|``; with
        ``p ≤ iters`` Lanczos spans the whole space and ``M⁻¹ = H₀⁻¹`` (up to rounding)."""
        _, _, matvec = value_grad_hvp(fun, x)
        q, t, beta = lanczos(matvec, x.numel(), x, iters)
        theta, s = torch.linalg.eigh(t)
        ok = ((beta * s[-1]).abs() <= 1e-2 * theta.abs()) & (theta != 0)
        bulk = float(theta.median().abs())
        return cls((q @ s[:, ok]).detach(), theta[ok], bulk if bulk > 0 else 1.0)


def pcg(matvec: Callable, b: torch.Tensor, precond: Callable, tol: float, max_iter: int) -> tuple[torch.Tensor, int, bool]:
    """Preconditioned CG on ``H x = b`` until ``‖r‖ ≤ tol‖b‖``: (x, iterations, negative curvature met).

    On negative curvature ``dᵀHd ≤ 0`` it stops with the iterate so far, or ``M⁻¹b`` at the first iteration —
    for ``b = −∇f`` both are descent directions (Nocedal & Wright, Algorithm 7.1).
    """
    x, r = torch.zeros_like(b), b.clone()
    z = precond(r)
    d, rz, bnorm = z.clone(), r @ z, b.norm()
    for it in range(max_iter):
        if r.norm() <= tol * bnorm:
            return x, it, False
        hd = matvec(d)
        dhd = d @ hd
        if not dhd > 0:
            return (x if it else z), it, True
        a = rz / dhd
        x, r = x + a * d, r - a * hd
        z = precond(r)
        rz, rz_old = r @ z, rz
        d = z + (rz / rz_old) * d
    return x, max_iter, False


@dataclass
class NewtonPath:
    """What :func:`newton_minimize` met on its way; the guard (:func:`guard_reason`) reads it."""

    first_step: float = math.nan  # ‖d₀‖, the first Newton step from the start: the first-order predicted displacement
    displacement: float = math.nan  # ‖x_final − x₀‖ where a minimum was reached
    backtracked: bool = False  # some step was shortened by the line search
    negative_curvature: bool = False  # some PCG met dᵀHd ≤ 0: the path crossed a non-convex region
    steps: int = 0
    cg_iterations: int = 0
    stopped: str = ""  # why no minimum was reached ('' where one was)


def _armijo(fun: Callable, x: torch.Tensor, value: torch.Tensor, g: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor | None, float]:
    """``(x + t d, t)`` with the largest ``t = 2⁻ʲ`` (j ≤ 10) such that ``fun ≤ fun(x) + 10⁻⁴ t gᵀd`` (+ rounding slack); None if none."""
    slack = 1e3 * torch.finfo(x.dtype).eps * max(1.0, abs(float(value)))
    slope = float(g @ d)
    t = 1.0
    for _ in range(11):
        x_new = x + t * d
        with torch.no_grad():
            f_new = fun(x_new)
        if torch.isfinite(f_new) and float(f_new) <= float(value) + 1e-4 * t * slope + slack:
            return x_new, t
        t /= 2
    return None, 0.0


def newton_minimize(fun: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, grad_tol: float, precond: Callable | None = None,
                    max_steps: int = 20, convex_only: bool = False) -> tuple[Minimum | None, NewtonPath]:
    """Newton–PCG from ``x0`` until ``‖∇fun‖₂ ≤ grad_tol`` (the stopping rule of :func:`minimize`).

    Each step solves ``∇²fun(x) d = −∇fun(x)`` by PCG on true HVPs at ``x`` (preconditioner ``precond``) to
    relative residual ``min(0.1, ‖∇fun‖)`` (superlinear, then quadratic convergence; truncated at negative
    curvature, see :func:`pcg`) and takes ``x + t d`` by Armijo backtracking on ``fun``. Returns (None, path) —
    the caller falls back to L-BFGS — on a failed line search, non-finite values or ``max_steps`` steps without
    convergence, and with ``convex_only`` at the first negative curvature or shortened step (the path leaves the
    region where Newton's full steps are safe: stopping there costs little of the fallback's time).
    """
    precond = precond or (lambda b: b)
    x0 = x0.detach()
    x, path = x0, NewtonPath()
    for step in range(max_steps + 1):
        value, g, matvec = value_grad_hvp(fun, x)
        gnorm = float(g.norm())
        path.steps = step
        if not (math.isfinite(gnorm) and bool(torch.isfinite(value))):
            path.stopped = "non-finite objective or gradient"
            return None, path
        if gnorm <= grad_tol:
            path.displacement = float((x - x0).norm())
            if step == 0:
                path.first_step = 0.0
            return Minimum(x, float(value), gnorm, 0, step, method="newton", cg_iterations=path.cg_iterations), path
        if step == max_steps:
            path.stopped = f"no convergence in {max_steps} Newton steps"
            return None, path
        d, its, neg = pcg(matvec, -g, precond, min(0.1, gnorm), 10 * x.numel())
        path.cg_iterations += its
        path.negative_curvature |= neg
        if step == 0:
            path.first_step = float(d.norm())
        if convex_only and neg:
            path.stopped = f"negative curvature at Newton step {step}"
            return None, path
        x, t = _armijo(fun, x, value, g, d)
        if x is None:
            path.stopped = f"line search failed at Newton step {step}"
            return None, path
        path.backtracked |= t < 1.0
        if convex_only and t < 1.0:
            path.stopped = f"line search shortened Newton step {step}"
            return None, path
    return None, path


# The guard's bound on how far Newton may land beyond the first-order step (landing displacement / ‖d₀‖).
GUARD_RATIO = 2.0
# Newton and L-BFGS landed in different minima where they are farther apart than this share of L-BFGS's displacement
# (both converged to grad_tol land within ~grad_tol / λ_min of one minimum: orders of magnitude closer).
ANOTHER_MINIMUM = 1e-2


def guard_reason(path: NewtonPath, ratio: float = GUARD_RATIO) -> str:
    """Why a Newton–PCG solve must be handed to L-BFGS ('' where it need not).

    Newton from a warm start lands in the minimum L-BFGS reaches when its whole path stays in a convex basin: full
    steps and positive curvature all along, and a landing within ``ratio`` times the first Newton step (the
    first-order predicted displacement). On the default config the pretraining Hessian's smallest eigenvalue is
    ~7e-4, so removing a few examples often makes it indefinite at the warm start; the one leave-k-out set in 48
    where Newton (run through such regions) and L-BFGS landed in different minima had negative curvature on 8 of
    its 14 steps.
    """
    reasons = [path.stopped] if path.stopped else []
    if path.negative_curvature and "negative curvature" not in path.stopped:
        reasons.append("negative curvature on the path")
    if path.backtracked and "shortened" not in path.stopped:
        reasons.append("line search shortened a step")
    if path.first_step > 0 and path.displacement > ratio * path.first_step:
        reasons.append(f"landed {path.displacement / path.first_step:.2f}x the first-order step away")
    return "; ".join(reasons)


def minimize_from_warm_start(fun: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, grad_tol: float, max_iter: int,
                             newton_steps: int = 8, precond: Callable | None = None, guard_ratio: float = GUARD_RATIO) -> Minimum:
    """:func:`newton_minimize` (``convex_only``) from ``x0``; where it stops, or its guard (:func:`guard_reason`) trips,
    :func:`minimize` (L-BFGS + polishing, the protocol) from the same ``x0``. The result says which (``method``, ``guard``);
    where both reached a minimum, ``newton_gap`` says how far apart."""
    newton, path = newton_minimize(fun, x0, grad_tol, precond, convex_only=True)
    reason = guard_reason(path, guard_ratio)
    if newton is not None and not reason:
        return newton
    out = minimize(fun, x0, grad_tol=grad_tol, max_iter=max_iter, newton_steps=newton_steps)
    if newton is not None:
        moved, gap = float((out.params - x0).norm()), float((out.params - newton.params).norm())
        out.newton_gap = gap / moved if moved > 0 else (0.0 if gap == 0 else math.inf)
        reason += f"; L-BFGS landed {out.newton_gap:.1e} x its own displacement from Newton"
    log.info("Newton-PCG handed the stage to L-BFGS: %s", reason)
    out.guard = reason
    return out

"""Optimisation to a true minimum: full-batch L-BFGS (strong Wolfe), then Newton polishing.

Influence functions are derivatives *at an optimum*; a score computed at a point with a
non-negligible gradient, or at a saddle, predicts nothing. :func:`minimize` therefore runs
L-BFGS to ``grad_tol`` and then a few Newton steps (CG on Hessian-vector products) with a
backtracking line search on the gradient norm, and reports the final gradient norm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad

from msif.core.products import hvp
from msif.core.solvers import cg

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training diverged or produced non-finite values."""


@dataclass
class Minimum:
    params: torch.Tensor
    value: float
    grad_norm: float
    lbfgs_iterations: int
    newton_steps: int

    def summary(self) -> dict:
        return {"value": self.value, "grad_norm": self.grad_norm, "lbfgs_iterations": self.lbfgs_iterations, "newton_steps": self.newton_steps}


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
    g_fun = grad(fun)
    g = g_fun(x)
    steps = 0
    for _ in range(max_steps):
        if g.norm() <= grad_tol:
            break
        sol = cg(hvp(fun, x), -g, tol=1e-12, max_iter=4 * x.numel())
        if sol.info["negative_curvature"]:
            log.warning("Newton polishing met negative curvature: the point may be a saddle")
            break
        t = 1.0
        while t > 1e-4:
            x_new = x + t * sol.x
            g_new = g_fun(x_new)
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
    g = grad(fun)(x)
    value = float(fun(x))
    if not (torch.isfinite(x).all() and torch.isfinite(g).all()):
        raise TrainingError("training produced non-finite parameters or gradients")
    out = Minimum(x, value, float(g.norm()), iters, steps)
    if out.grad_norm > 100 * grad_tol:
        log.warning("minimisation stopped at gradient norm %.3e > target %.1e", out.grad_norm, grad_tol)
    return out

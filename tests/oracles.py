"""Oracles for the tests: tiny float64 problems, dense Hessians, exact re-optimisation.

Everything here is deliberately naive (dense matrices, Newton with the full Hessian) so it can
judge the library's stage-wise, matrix-free computations.
"""

from __future__ import annotations

import torch
from torch.func import grad, hessian

from msif.data import Split, TwoStageData
from msif.models import mlp_model
from msif.objectives import FinetuneObjective, PretrainObjective
from msif.training import minimize

DT = torch.float64
CPU = torch.device("cpu")


def newton_minimize(fun, x0: torch.Tensor, tol: float = 1e-13, max_steps: int = 100) -> torch.Tensor:
    """Damped Newton with the dense Hessian until ‖∇fun‖ ≤ tol (the re-optimisation oracle)."""
    x = x0.clone()
    for _ in range(max_steps):
        g = grad(fun)(x)
        if g.norm() <= tol:
            return x
        step = torch.linalg.solve(hessian(fun)(x), g)
        t = 1.0
        while t > 1e-6 and grad(fun)(x - t * step).norm() >= g.norm():
            t /= 2
        x = x - t * step
    raise AssertionError(f"Newton oracle did not reach {tol}: gradient norm {float(grad(fun)(x).norm()):.2e}")


def tiny_problem(seed: int = 0, n: int = 24, m: int = 18, n_test: int = 3, d: int = 4, hidden: int = 3, l2: float = 0.05):
    """A tiny tanh two-stage problem on random data, trained to a tight minimum in float64."""
    gen = torch.Generator().manual_seed(seed)

    def split(k: int, classes: int) -> Split:
        x = torch.randn(k, d, generator=gen, dtype=DT)
        y = torch.randint(0, classes, (k,), generator=gen)
        return Split(x, y, torch.arange(k))

    data = TwoStageData(split(n, 2), split(8, 2), split(m, 3), split(n_test, 3))
    model = mlp_model(d, [hidden], 2, 3)
    w, u, theta = model.init_params(seed, DT, CPU)
    pt = PretrainObjective(model, data.pretrain, l2)
    pt_params = newton_minimize(pt, minimize(pt, torch.cat([w, u])).params)
    return data, model, pt, pt_params, theta


def finetuned(model, data: TwoStageData, w_pt: torch.Tensor, theta0: torch.Tensor, scenario: str, alpha: float, l2: float = 0.05):
    ft = FinetuneObjective(model, data.finetune, l2, w_pt, scenario, alpha)
    x0 = ft.initial(theta0)
    return ft, newton_minimize(ft, minimize(ft, x0).params, tol=1e-13 * max(1.0, alpha))


def retrained_test_losses(model, data: TwoStageData, pt_params: torch.Tensor, ft_params: torch.Tensor, weights: torch.Tensor,
                          scenario: str, alpha: float, l2: float = 0.05) -> torch.Tensor:
    """Test losses after re-optimising both stages with pretraining weights c_i (warm starts)."""
    from msif.objectives import finetune_losses

    pt = PretrainObjective(model, data.pretrain, l2, weights)
    new_pt = newton_minimize(pt, minimize(pt, pt_params, grad_tol=1e-11).params)
    w_pt = new_pt[: model.w_spec.numel]
    ft = FinetuneObjective(model, data.finetune, l2, w_pt, scenario, alpha)
    start = ft_params if scenario == "fixed" else torch.cat([ft_params[: ft.p_theta], w_pt])
    new_ft = newton_minimize(ft, minimize(ft, start, grad_tol=1e-11).params)
    theta, w = ft.split(new_ft)
    return finetune_losses(model, w, theta, data.finetune_test.x, data.finetune_test.y)


def finite_difference_upweight(model, data, pt_params, ft_params, i: int, scenario: str, alpha: float, eps: float = 1e-4) -> torch.Tensor:
    """Central difference of test losses in ε, z_i's weight in the mean raised by ε: ``I_up`` (n_test,)."""
    n = len(data.pretrain)
    plus, minus = torch.ones(n, dtype=DT), torch.ones(n, dtype=DT)
    plus[i] += eps * n
    minus[i] -= eps * n
    f_plus = retrained_test_losses(model, data, pt_params, ft_params, plus, scenario, alpha)
    f_minus = retrained_test_losses(model, data, pt_params, ft_params, minus, scenario, alpha)
    return (f_plus - f_minus) / (2 * eps)

"""Oracles for the tests: tiny float64 problems, dense Hessians, exact re-optimisation.

Everything here is deliberately naive (dense matrices, Newton with the full Hessian) so it can
judge the library's stage-wise, matrix-free computations.
"""

from __future__ import annotations

import torch
from torch.func import grad, hessian

from msif.task.data import Split, TwoStageData
from msif.task.models import mlp_model
from msif.task.objectives import FinetuneObjective, PretrainObjective
from msif.task.training import minimize

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


def tiny_problem(seed: int = 0, n: int = 24, m: int = 18, n_test: int = 3, d: int = 4, hidden: int = 3, l2: float = 0.05,
                 objective: str = "classify"):
    """A tiny tanh two-stage problem on random data, trained to a tight minimum in float64.

    ``objective``: the pretraining objective (``classify``, or ``reconstruct``: U decodes the features to the inputs).
    """
    gen = torch.Generator().manual_seed(seed)

    def split(k: int, classes: int) -> Split:
        x = torch.randn(k, d, generator=gen, dtype=DT)
        y = torch.randint(0, classes, (k,), generator=gen)
        return Split(x, y, torch.arange(k))

    data = TwoStageData(split(n, 2), split(8, 2), split(m, 3), split(n_test, 3))
    model = mlp_model(d, [hidden], 2, 3, pretrain_objective=objective)
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
    from msif.task.objectives import finetune_losses

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


def finite_difference_upweight_all(model, data: TwoStageData, pt_params: torch.Tensor, finetuned_by_scenario: dict,
                                   eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """``I_up`` of EVERY pretraining example by central differences, for several scenarios at once: {scenario: (n_test, n)}.

    ``finetuned_by_scenario``: {scenario: (FinetuneObjective, its optimum)}. z_i's weight in the mean is raised by ±ε
    (c_i = 1 ± εn); each stage is re-optimised by the dense Newton oracle warm-started at its optimum (a tiny
    perturbation: quadratic convergence from the first step), pretraining once per ±ε, shared by the scenarios.
    Error: truncation O(ε²) plus round-off O(1e-16/ε); on tiny_problem() both together ≤ 3.4e-9 at ε = 1e-6 (the
    truncation part is ∝ ε², measured 100× larger at ε = 1e-5; round-off alone ≈ 4e-9 at ε = 1e-7, so ≈ 4e-10 here).
    """
    from msif.task.objectives import finetune_losses

    n, p_w = len(data.pretrain), model.w_spec.numel
    l2 = next(iter(finetuned_by_scenario.values()))[0].l2

    def test_losses(weights: torch.Tensor) -> dict[str, torch.Tensor]:
        w_pt = newton_minimize(PretrainObjective(model, data.pretrain, l2, weights), pt_params)[:p_w]
        out = {}
        for scenario, (ft, ft_params) in finetuned_by_scenario.items():
            obj = FinetuneObjective(model, data.finetune, ft.l2, w_pt, scenario, ft.alpha)
            start = ft_params if scenario == "fixed" else torch.cat([ft_params[: ft.p_theta], w_pt + ft_params[ft.p_theta :] - ft.w_pt])
            theta, w = obj.split(newton_minimize(obj, start, tol=1e-13 * max(1.0, ft.alpha)))
            out[scenario] = finetune_losses(model, w, theta, data.finetune_test.x, data.finetune_test.y)
        return out

    columns: dict[str, list] = {s: [] for s in finetuned_by_scenario}
    for i in range(n):
        plus, minus = torch.ones(n, dtype=DT), torch.ones(n, dtype=DT)
        plus[i] += eps * n
        minus[i] -= eps * n
        f_plus, f_minus = test_losses(plus), test_losses(minus)
        for s, col in columns.items():
            col.append((f_plus[s] - f_minus[s]) / (2 * eps))
    return {s: torch.stack(col, 1) for s, col in columns.items()}


def dense_ggn(objective, params: torch.Tensor) -> torch.Tensor:
    """``Jᵀ H J + ∇²r`` built densely: J the Jacobian of every example's logits (n·C, p), H the Hessian
    of the objective's loss part in the logits (n·C, n·C), ∇²r the Hessian of (objective − loss part)."""
    from torch.func import jacrev

    from msif.task.objectives import PretrainObjective

    model = objective.model
    if isinstance(objective, PretrainObjective):
        data, n = objective.data, objective.n
        c = objective.weights if objective.weights is not None else torch.ones(n, dtype=params.dtype)

        def logits(p):
            return model.pt_logits(*objective.split(p), data.x)

        def loss(z):
            return (c * model.pt_loss(z, model.pt_target(data.x, data.y))).sum() / n
    else:
        data = objective.data

        def logits(p):
            theta, w = objective.split(p)
            return model.ft_logits(w, theta, data.x)

        def loss(z):
            return model.ft_loss(z, data.y).mean()

    z = logits(params)
    jac = jacrev(lambda p: logits(p).reshape(-1))(params)
    h_out = hessian(lambda zf: loss(zf.reshape(z.shape)))(z.reshape(-1))
    h_reg = hessian(lambda p: objective(p) - loss(logits(p)))(params)
    return jac.T @ h_out @ jac + h_reg


def one_layer_ekfac(features: torch.Tensor, logits: torch.Tensor, weight: torch.Tensor | None, l2: float) -> torch.Tensor:
    """EK-FAC of a single Linear layer ``z = Θ a + b`` under mean cross-entropy, built densely by hand.

    ``a_i = [features_i; 1]``, ``H_i = diag(p_i) − p_i p_iᵀ``; the layer's exact GGN in the row-major
    (out, in+1) ordering is ``G = Σ_i w_i H_i ⊗ a_i a_iᵀ``; K-FAC's factors are ``A = Σ w_i a_i a_iᵀ``
    and ``S = Σ w_i H_i``; EK-FAC keeps ``Q = Q_S ⊗ Q_A`` and takes ``Λ = diag(Qᵀ G Q)``. Returned in the
    flat parameter ordering ``[Θ (row-major), b]``, plus ``l2·I``.
    """
    n, d_in = features.shape
    w = weight if weight is not None else torch.full((n,), 1.0 / n, dtype=features.dtype)
    a = torch.cat([features, torch.ones(n, 1, dtype=features.dtype)], dim=1)
    p = torch.softmax(logits, dim=1)
    hs = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    g = sum(w[i] * torch.kron(hs[i], torch.outer(a[i], a[i])) for i in range(n))
    a_fac = sum(w[i] * torch.outer(a[i], a[i]) for i in range(n))
    s_fac = sum(w[i] * hs[i] for i in range(n))
    q = torch.kron(torch.linalg.eigh(s_fac)[1], torch.linalg.eigh(a_fac)[1])
    lam = torch.diagonal(q.T @ g @ q)
    ekfac = q @ torch.diag(lam) @ q.T
    out, d = hs.shape[1], d_in + 1
    order = [o * d + j for o in range(out) for j in range(d_in)] + [o * d + d_in for o in range(out)]
    return ekfac[order][:, order] + l2 * torch.eye(out * d, dtype=features.dtype)

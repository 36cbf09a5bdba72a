"""Solvers against the dense oracle on tiny float64 problems."""

import pytest
import torch
from torch.func import hessian

from msif.arguments import CGOptions
from msif.core.products import dense_matrix, hvp
from msif.core.solvers import Eigh, block_cg, cg, exact_solve, lanczos_extremes, solve
from oracles import tiny_problem


@pytest.fixture(scope="module")
def pretrain_problem():
    _, _, pt, pt_params, _ = tiny_problem(n=30, hidden=4)
    return pt, pt_params


def test_hvp_and_dense_matrix_equal_autograd_hessian(pretrain_problem):
    pt, x = pretrain_problem
    h = hessian(pt)(x)
    v = torch.randn(x.numel(), 3, dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hvp(pt, x)(v), h @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dense_matrix(hvp(pt, x), x.numel(), x, chunk=5), h, rtol=1e-10, atol=1e-12)


def test_products_on_many_columns_are_chunked_and_equal(pretrain_problem, monkeypatch):
    """More columns than ``COLUMN_CHUNK`` are vmapped chunk by chunk (memory ∝ chunk, not t); same products."""
    import msif.core.products

    pt, x = pretrain_problem
    h = hessian(pt)(x)
    v = torch.randn(x.numel(), 11, dtype=x.dtype, generator=torch.Generator().manual_seed(5))
    calls = []
    monkeypatch.setattr(msif.core.products, "COLUMN_CHUNK", 4)
    monkeypatch.setattr(msif.core.products, "vmap", lambda f, **kw: (lambda m: calls.append(m.shape[1]) or torch.func.vmap(f, **kw)(m)))
    torch.testing.assert_close(hvp(pt, x)(v), h @ v, rtol=1e-10, atol=1e-12)
    assert calls == [4, 4, 3]


@pytest.mark.parametrize("damping", [0.0, 1e-2])
def test_exact_and_cg_solve_many_right_hand_sides(pretrain_problem, damping):
    pt, x = pretrain_problem
    h = hessian(pt)(x) + damping * torch.eye(x.numel(), dtype=x.dtype)
    b = torch.randn(x.numel(), 4, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    truth = torch.linalg.solve(h, b)
    ex = exact_solve(hvp(pt, x), b, damping)
    torch.testing.assert_close(ex.x, truth, rtol=1e-8, atol=1e-10)
    assert ex.residual.shape == (4,) and ex.residual.max() < 1e-10
    sol = cg(hvp(pt, x), b, damping, tol=1e-12, max_iter=500)
    torch.testing.assert_close(sol.x, truth, rtol=1e-6, atol=1e-8)
    assert sol.info["converged"] and sol.residual.max() <= 1e-11


@pytest.mark.parametrize("damping", [0.0, 1e-2])
def test_block_cg_equals_the_dense_solve_in_fewer_products(pretrain_problem, damping):
    """Block CG shares one Krylov space across the columns: the dense answer, with fewer Hessian
    products than one CG per column (which stop independently at the same tolerance)."""
    pt, x = pretrain_problem
    h = hessian(pt)(x) + damping * torch.eye(x.numel(), dtype=x.dtype)
    b = torch.randn(x.numel(), 8, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    truth = torch.linalg.solve(h, b)
    blk = block_cg(hvp(pt, x), b, damping, tol=1e-12, max_iter=500)
    one = cg(hvp(pt, x), b, damping, tol=1e-12, max_iter=500)
    torch.testing.assert_close(blk.x, truth, rtol=1e-6, atol=1e-8)
    assert blk.info["converged"] and blk.residual.max() <= 1e-11
    assert blk.info["hvps"] < one.info["hvps"] / 2, (blk.info["hvps"], one.info["hvps"])


def test_block_cg_survives_dependent_and_zero_columns():
    """Repeated, zero and tiny columns make the residual block rank deficient: the search block
    drops those directions instead of breaking down, and every column is still the dense solve."""
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(60, 60, dtype=torch.float64, generator=g))
    h = q @ torch.diag(torch.logspace(-3, 1, 60, dtype=torch.float64)) @ q.T
    b = torch.randn(60, 3, dtype=torch.float64, generator=g)
    b = torch.cat([b, b, 2 * b[:, :1], torch.zeros(60, 1, dtype=torch.float64), 1e-9 * b[:, 1:2]], dim=1)
    sol = block_cg(lambda v: h @ v, b, 1e-3, tol=1e-12, max_iter=500)
    torch.testing.assert_close(sol.x, torch.linalg.solve(h + 1e-3 * torch.eye(60, dtype=torch.float64), b), rtol=1e-7, atol=1e-9)
    assert sol.info["converged"] and sol.info["first_block_width"] == 3 and torch.isfinite(sol.x).all()
    assert sol.info["hvps"] < cg(lambda v: h @ v, b, 1e-3, tol=1e-12, max_iter=500).info["hvps"] / 2


def test_block_cg_with_the_exact_inverse_as_preconditioner_stops_after_one_iteration(pretrain_problem):
    """``M⁻¹ = A⁻¹``: the first search block spans the solutions, so one iteration (one product per column) is exact;
    a preconditioner that is right only up to a scalar per column (``2·A⁻¹``) changes nothing."""
    pt, x = pretrain_problem
    h = hessian(pt)(x) + 1e-2 * torch.eye(x.numel(), dtype=x.dtype)
    b = torch.randn(x.numel(), 5, dtype=x.dtype, generator=torch.Generator().manual_seed(4))
    truth = torch.linalg.solve(h, b)
    for scale in (1.0, 2.0):
        sol = block_cg(hvp(pt, x), b, 1e-2, tol=1e-10, max_iter=50, precondition=lambda v, c=scale: c * torch.linalg.solve(h, v))
        assert sol.info["iterations"] == 1 and sol.info["hvps"] == 5 and sol.info["preconditioned"] and sol.info["solver"] == "pcg"
        torch.testing.assert_close(sol.x, truth, rtol=1e-8, atol=1e-10)
    # a poor but SPD preconditioner (a diagonal) still converges to the dense answer
    diag = h.diagonal()
    sol = block_cg(hvp(pt, x), b, 1e-2, tol=1e-12, max_iter=500, precondition=lambda v: v / diag[:, None])
    torch.testing.assert_close(sol.x, truth, rtol=1e-6, atol=1e-8)
    assert sol.info["converged"]


def test_block_cg_flags_negative_curvature_and_solve_dispatches_it():
    h = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    sol = block_cg(lambda v: h @ v, torch.eye(3, dtype=torch.float64)[:, :2], tol=1e-12, max_iter=50)
    assert sol.info["negative_curvature"] and not sol.info["converged"]
    spd = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    b = torch.ones(3, 2, dtype=torch.float64)
    assert solve("cg", lambda v: spd @ v, b, 0.0, None, lanczos_iters=0).info["block"]
    assert "block" not in solve("cg", lambda v: spd @ v, b, 0.0, CGOptions(block=False), lanczos_iters=0).info


def test_cg_reports_non_convergence(pretrain_problem):
    pt, x = pretrain_problem
    b = torch.ones(x.numel(), 2, dtype=x.dtype)
    sol = cg(hvp(pt, x), b, tol=1e-12, max_iter=2)
    assert not sol.info["converged"]
    assert sol.residual.min() > 1e-6


def test_cg_flags_negative_curvature():
    h = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    sol = cg(lambda v: h @ v, torch.ones(3, 1, dtype=torch.float64), tol=1e-12, max_iter=50)
    assert sol.info["negative_curvature"]


def test_exact_refuses_indefinite_matrix():
    h = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"not positive definite.*smallest eigenvalue -2"):
        exact_solve(lambda v: h @ v, torch.ones(3, 1, dtype=torch.float64))
    out = exact_solve(lambda v: h @ v, torch.ones(3, 1, dtype=torch.float64), damping=2.5)
    assert out.info["min_eigenvalue"] == pytest.approx(-2.0)


def test_lanczos_extremes_match_eigvalsh(pretrain_problem):
    pt, x = pretrain_problem
    ev = torch.linalg.eigvalsh(hessian(pt)(x))
    lo, hi = lanczos_extremes(hvp(pt, x), x.numel(), x, iters=x.numel())
    assert lo == pytest.approx(float(ev[0]), rel=1e-6, abs=1e-9)
    assert hi == pytest.approx(float(ev[-1]), rel=1e-8)


def test_solve_dispatch_names_allowed_solvers(pretrain_problem):
    pt, x = pretrain_problem
    with pytest.raises(ValueError, match=r"solver='newton'.*\['exact', 'cg', 'lissa', 'arnoldi', 'ekfac', 'pcg'\]"):
        solve("newton", hvp(pt, x), torch.ones(x.numel(), 1, dtype=x.dtype), 0.0)
    e = Eigh.of(hvp(pt, x), x.numel(), x)
    out = solve("exact", hvp(pt, x), torch.ones(x.numel(), 1, dtype=x.dtype), 0.0, eigh=e)
    assert out.residual.max() < 1e-10

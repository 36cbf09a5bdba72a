"""The solver suite (LiSSA, Arnoldi, EK-FAC, GGN) against dense float64 oracles on tiny problems.

Residual bounds (relative, ‖(H+λI)x − b‖/‖b‖ against the true curvature):
- exact, CG: tight (≤ 1e-9);
- LiSSA: full-batch with depth from the contraction bound: ≤ 1e-6; mini-batch: one run is a draw from a
  wide distribution (≈ 0.25 relative error here), so it is judged in expectation — the sampler draws unbiased
  batches, and the mean of 200 runs equals the dense solve within 4 standard errors (≤ 0.1 ‖x‖);
- Arnoldi: exact on the top-r eigenspace — equals the dense solve projected on the true top-r
  eigenvectors (≤ 1e-6), so its residual equals ‖(I − P_r) b‖/‖b‖, loose by design;
- EK-FAC: equals the dense K-FAC-with-eigenvalue-correction oracle (≤ 1e-9); its residual against the
  true curvature is whatever the Kronecker approximation leaves.
"""

import math

import pytest
import torch
import yaml
from torch import nn
from torch.func import functional_call, hessian, jacrev

from msif.arguments import ArnoldiOptions, CGOptions, EKFACOptions, LissaOptions, PCGOptions, SolveArguments, stage_solvers
from msif.core.ekfac import EKFAC
from msif.core.products import NonFiniteError, dense_matrix
from msif.core.solvers import arnoldi, cg, ekfac_solve, lissa, solve
from msif.influence.multi_stage import finetune_ihvp
from msif.influence.stage_solve import stage_solve
from msif.task.data import Split
from msif.task.models import TwoStageModel
from msif.task.objectives import PretrainObjective, stage_of
from oracles import DT, dense_ggn, finetuned, one_layer_ekfac, tiny_problem


@pytest.fixture(scope="module")
def problem():
    data, model, pt, pt_params, theta0 = tiny_problem(n=30, hidden=4)
    w_pt = pt_params[: model.w_spec.numel]
    stages = {"pretrain": (pt, pt_params)}
    for scenario, alpha in (("fixed", 0.0), ("updated", 0.5)):
        stages[scenario] = finetuned(model, data, w_pt, theta0, scenario, alpha)
    return data, model, stages


def rhs(p: int, t: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(p, t, dtype=DT, generator=torch.Generator().manual_seed(seed))


def dense_solve(obj, x, b, damping, curvature="hessian"):
    c = hessian(obj)(x) if curvature == "hessian" else dense_ggn(obj, x)
    return torch.linalg.solve(c + damping * torch.eye(x.numel(), dtype=DT), b)


@pytest.mark.parametrize("stage", ["pretrain", "fixed", "updated"])
def test_stage_decomposition_equals_the_objective(problem, stage):
    _, _, stages = problem
    obj, x = stages[stage]
    st = stage_of(obj)
    torch.testing.assert_close(st(x), obj(x), rtol=1e-14, atol=1e-14)
    v = rhs(x.numel(), 2)
    torch.testing.assert_close(st.matvec(x, "hessian", torch.arange(st.n))(v), hessian(obj)(x) @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stage", ["pretrain", "fixed", "updated"])
def test_ggn_equals_dense_jt_h_j(problem, stage):
    _, _, stages = problem
    obj, x = stages[stage]
    g = dense_ggn(obj, x)
    torch.testing.assert_close(dense_matrix(stage_of(obj).matvec(x, "ggn"), x.numel(), x), g, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(g).min() > 0  # PSD + the L2 / proximal term


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize("stage", ["pretrain", "updated"])
def test_cg_and_exact_through_stage_solve_are_tight(problem, stage, curvature):
    _, _, stages = problem
    obj, x = stages[stage]
    b = rhs(x.numel())
    truth = dense_solve(obj, x, b, 1e-3, curvature)
    for name in ("exact", "cg"):
        out = stage_solve(obj, x, b, name, SolveArguments.from_config({"damping": 1e-3, "curvature": curvature, "cg": {"tol": 1e-12, "max_iter": 500}}))
        torch.testing.assert_close(out.x, truth, rtol=1e-7, atol=1e-9)
        assert out.residual.max() <= 1e-9 and out.info["converged"] and out.info["curvature"] == curvature


def test_lissa_full_batch_converges_at_the_contraction_rate(problem):
    obj, x = problem[2]["pretrain"]
    damping = 0.05
    ev = torch.linalg.eigvalsh(hessian(obj)(x))
    scale = 1.05 * float(ev[-1] + damping)
    depth = math.ceil(math.log(1e-9) / math.log(1 - float(ev[0] + damping) / scale))
    b = rhs(x.numel())
    out = lissa(stage_of(obj).matvec(x), b, damping, scale=scale, depth=depth, tol=1e-6)
    torch.testing.assert_close(out.x, dense_solve(obj, x, b, damping), rtol=1e-6, atol=1e-8)
    assert out.info["converged"] and out.residual.max() <= 1e-6 and out.info["hvps"] == depth * 3


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_minibatch_curvature_is_unbiased(problem, curvature):
    """The mean of the mini-batch curvatures over a partition into equal halves is the full curvature."""
    obj, x = problem[2]["pretrain"]
    st = stage_of(PretrainObjective(obj.model, obj.data, obj.l2, torch.linspace(0.5, 1.5, obj.n, dtype=DT)))
    half = torch.randperm(st.n, generator=torch.Generator().manual_seed(0)).reshape(2, -1)
    v = rhs(x.numel(), 2)
    mean = 0.5 * (st.matvec(x, curvature, half[0])(v) + st.matvec(x, curvature, half[1])(v))
    torch.testing.assert_close(mean, st.matvec(x, curvature)(v), rtol=1e-10, atol=1e-12)


def test_lissa_on_mini_batches_is_loose_but_close(problem):
    obj, x = problem[2]["pretrain"]
    damping = 0.05
    b = rhs(x.numel(), 2)
    out = stage_solve(obj, x, b, "lissa", SolveArguments(damping, lissa=LissaOptions(batch_size=15, depth=120, repeats=2, scale=2.0)))
    # the wiring: stage_solve is lissa() on this stage's mini-batch sampler with these options, nothing else (its accuracy
    # is judged in expectation below; a single run's error is a draw from a wide distribution)
    st = stage_of(obj)
    direct = lissa(st.matvec(x), b, damping, sampler=st.sampler(x, "hessian", 15), scale=2.0, depth=120, repeats=2, seed=0)
    assert torch.equal(out.x, direct.x) and torch.equal(out.residual, direct.residual)
    assert out.info["minibatch_fraction"] == 0.5 and out.info["full_hvp_equivalents"] == 0.5 * out.info["hvps"]
    assert out.info["hvps"] == 120 * 2 * 2  # depth × repeats × columns, no Lanczos (scale given)


def per_example_curvatures(obj, x) -> torch.Tensor:
    """``∇²ℓ_i + ∇²r`` for every example i, densely: the stage's curvature on the one-example batch {i}, (n, p, p)."""
    st = stage_of(obj)
    return torch.stack([dense_matrix(st.matvec(x, "hessian", torch.tensor([i])), x.numel(), x) for i in range(st.n)])


def test_lissa_sampler_draws_uniform_minibatches_of_the_mean_curvature(problem):
    """Each draw of the stage's sampler is the curvature of the mean loss over b distinct examples plus the whole L2 term:
    decomposed by least squares on the per-example loss Hessians and the identity, its coefficients are 1/b on exactly b
    examples, 0 on the others and λ_pt on I. Over 24 draws each example is drawn ~Binomial(24, b/n) times (b/n = 1/2):
    every one between 2 and 22 (4 sd), and the draws are not all one batch. So E[H_j] = H: the sampler is unbiased."""
    obj, x = problem[2]["pretrain"]
    n, p, batch = obj.n, x.numel(), 15
    per_example = per_example_curvatures(obj, x)
    torch.testing.assert_close(per_example.mean(0), hessian(obj)(x), rtol=1e-10, atol=1e-12)
    eye = torch.eye(p, dtype=DT)
    basis = torch.cat([(per_example - obj.l2 * eye).reshape(n, -1), eye.reshape(1, -1)]).T  # (p², n + 1)
    assert torch.linalg.matrix_rank(basis) == n + 1
    sampler = stage_of(obj).sampler(x, "hessian", batch)
    gen = torch.Generator().manual_seed(0)
    counts, batches = torch.zeros(n), set()
    for _ in range(24):
        m = dense_matrix(sampler.draw(gen), p, x)
        coef = torch.linalg.lstsq(basis, m.reshape(-1, 1)).solution.flatten()
        torch.testing.assert_close(basis @ coef, m.reshape(-1), rtol=0, atol=1e-10)  # in the span: nothing else in a draw
        drawn = coef[:n] > 0.5 / batch
        assert int(drawn.sum()) == batch, coef
        torch.testing.assert_close(coef[:n][drawn], torch.full((batch,), 1 / batch, dtype=DT), rtol=0, atol=1e-8)
        torch.testing.assert_close(coef[:n][~drawn], torch.zeros(n - batch, dtype=DT), rtol=0, atol=1e-8)
        torch.testing.assert_close(coef[n], torch.tensor(obj.l2, dtype=DT), rtol=0, atol=1e-8)
        counts += drawn
        batches.add(tuple(torch.nonzero(drawn).flatten().tolist()))
    assert len(batches) > 1 and counts.min() >= 2 and counts.max() <= 22, counts


def test_minibatch_lissa_averages_to_the_dense_solve(problem):
    """Mini-batch LiSSA converges in expectation: each batch is drawn independently of x_{j-1} and E[H_j] = H, so the
    mean over independent runs follows the full-batch recursion, whose value at this depth is (H + λI)⁻¹b up to the
    contraction bound's 1e-6.

    R = 200 independent runs side by side in one lissa() call: the sampler draws an independent batch of 20 for each
    run's column (the recursion acts column by column), its products from the dense per-example curvatures (the
    stage's own draws are those, test above). One run's error is ≈ 0.23 ‖x‖ (sd); the mean over runs must lie within
    4 standard errors (from the runs' spread, ≈ 0.016 ‖x‖) plus the truncation error, and that bound must be
    ≤ 0.1 ‖x‖: a factor 2 (error 0.5 ‖x‖), a sign (2 ‖x‖) or twice the damping (0.34 ‖x‖ on this problem) fails.
    """
    from msif.core.products import MinibatchSampler

    obj, x = problem[2]["pretrain"]
    n, p = obj.n, x.numel()
    damping, scale, batch, runs = 0.05, 1.5, 20, 200
    per_example = per_example_curvatures(obj, x)
    h = per_example.mean(0)
    ev = torch.linalg.eigvalsh(h)
    assert ev[-1] + damping < scale and ev[0] > 0
    depth = math.ceil(math.log(1e-6) / math.log(1 - float(ev[0] + damping) / scale))
    b = rhs(p, 1)

    def draw(gen):
        idx = torch.rand(runs, n, generator=gen).argsort(1)[:, :batch]  # one batch per run, without replacement
        weights = torch.zeros(runs, n, dtype=DT).scatter_(1, idx, 1 / batch)
        m = (weights @ per_example.reshape(n, -1)).reshape(runs, p, p)
        return lambda v: torch.bmm(m, v.T[:, :, None])[:, :, 0].T  # run r's batch on column r

    out = lissa(lambda v: h @ v, b.expand(p, runs), damping, sampler=MinibatchSampler(draw, batch / n), scale=scale, depth=depth)
    mean = out.x.mean(1)
    se = float((((out.x - mean[:, None]) ** 2).sum() / (runs - 1) / runs).sqrt())  # sqrt(tr Cov / R)
    truth = torch.linalg.solve(h + damping * torch.eye(p, dtype=DT), b)[:, 0]
    # the full-batch recursion's value at this depth in closed form: A⁻¹(I − (I − A/s)^(depth+1)) b, A = H + λI
    ev_a, vec = torch.linalg.eigh(h + damping * torch.eye(p, dtype=DT))
    truncation = float((vec @ ((1 - ev_a / scale) ** (depth + 1) / ev_a * (vec.T @ b[:, 0]))).norm())
    assert truncation <= 1e-5 * truth.norm(), truncation
    bound = 4 * se + truncation
    assert bound <= 0.1 * truth.norm(), (bound, truth.norm())
    err = float((mean - truth).norm())
    assert err <= bound, (err / truth.norm(), bound / truth.norm())


def test_lissa_reports_divergence_as_non_finite(problem):
    obj, x = problem[2]["pretrain"]
    out = lissa(stage_of(obj).matvec(x), rhs(x.numel(), 2), 0.0, scale=1e-3, depth=2000)
    assert not out.info["converged"] and out.info["non_finite_columns"] == [0, 1]
    assert torch.isnan(out.residual).all()


def test_arnoldi_equals_the_dense_solve_on_the_top_eigenspace(problem):
    obj, x = problem[2]["pretrain"]
    ev, vec = torch.linalg.eigh(hessian(obj)(x))
    rank, damping = 4, 1e-3
    top = vec[:, torch.argsort(ev.abs(), descending=True)[:rank]]
    b = rhs(x.numel())
    proj = top @ torch.diag(1 / (top.T @ hessian(obj)(x) @ top).diagonal().add(damping)) @ top.T @ b
    out = arnoldi(stage_of(obj).matvec(x), b, damping, rank=rank, iters=x.numel())
    torch.testing.assert_close(out.x, proj, rtol=1e-6, atol=1e-9)
    outside = (b - top @ (top.T @ b)).norm(dim=0) / b.norm(dim=0)
    torch.testing.assert_close(out.residual, outside, rtol=1e-5, atol=1e-8)  # ‖(I − P_r) b‖/‖b‖: loose by design
    assert out.info["hvps"] <= x.numel() and out.info["max_ritz_residual"] < 1e-6


def test_ekfac_equals_dense_kfac_with_eigenvalue_correction_on_one_layer(problem):
    """Scenario A finetuning: Θ is one Linear layer on fixed features — K-FAC's exact home."""
    data, model, stages = problem
    ft, theta = stages["fixed"]
    feats = model.features(ft.w_pt, data.finetune.x)
    oracle = one_layer_ekfac(feats, model.ft_logits(ft.w_pt, theta, data.finetune.x), None, ft.l2)
    fit = EKFAC.fit(stage_of(ft), theta, batch_size=7)
    assert fit.info["layers"] == ["ft_head"] and fit.info["unsupported"] == []
    b = rhs(theta.numel())
    for damping in (0.0, 1e-2):
        want = torch.linalg.solve(oracle + damping * torch.eye(theta.numel(), dtype=DT), b)
        torch.testing.assert_close(fit.solve(b, damping), want, rtol=1e-9, atol=1e-11)
    out = ekfac_solve(stage_of(ft).matvec(theta), b, 0.0, fit)
    torch.testing.assert_close(out.residual, (hessian(ft)(theta) @ out.x - b).norm(dim=0) / b.norm(dim=0))


def kronecker_basis(layer, p: int) -> torch.Tensor:
    """Columns: the layer's Kronecker eigenvectors ``q_S,o ⊗ q_A,j`` as flat parameter vectors (p, out·d)."""
    basis = torch.zeros(layer.out * layer.d, layer.out, layer.d, dtype=DT)
    for o in range(layer.out):
        for j in range(layer.d):
            basis[o * layer.d + j] = torch.outer(layer.qs[:, o], layer.qa[:, j])
    flat = torch.zeros(p, layer.out * layer.d, dtype=DT)
    layer.scatter(basis, flat)
    return flat


def check_ekfac_against_dense_ggn(obj, x, fit, reg_of):
    """Every layer's corrected eigenvalues are the dense GGN's diagonal in its Kronecker basis, and
    the solve inverts ``Σ_layers E (Λ + ρ) Eᵀ`` (+ ρ on the rest)."""
    p = x.numel()
    g = dense_ggn(obj, x)
    reg = torch.diagonal(hessian(lambda q: obj(q))(x) - hessian(lambda q: obj(q) - stage_of(obj).reg(q))(x))
    approx = torch.diag(reg.clone())
    for layer in fit.layers:
        e = kronecker_basis(layer, p)
        idx = layer.indices()
        assert torch.allclose(reg[idx], torch.full((len(idx),), reg_of(layer.name), dtype=DT))
        lam = torch.diagonal(e.T @ (g - torch.diag(reg)) @ e).reshape(layer.out, layer.d)
        torch.testing.assert_close(layer.eigenvalues, lam, rtol=1e-9, atol=1e-12)
        approx[idx] = 0
        approx[:, idx] = 0
        approx += e @ torch.diag((layer.eigenvalues + layer.reg).reshape(-1)) @ e.T
    b = rhs(p)
    torch.testing.assert_close(fit.solve(b, 1e-2), torch.linalg.solve(approx + 1e-2 * torch.eye(p, dtype=DT), b), rtol=1e-8, atol=1e-10)


def test_ekfac_on_two_layers_and_the_proximal_block(problem):
    """Scenario B finetuning is over (Θ, W): λ_ft on Θ's layer, α on the body's layers."""
    _, _, stages = problem
    ft, x = stages["updated"]
    fit = EKFAC.fit(stage_of(ft), x, batch_size=64)
    assert fit.info["layers"] == ["ft_head", "body.0"]
    check_ekfac_against_dense_ggn(ft, x, fit, lambda name: ft.l2 if name == "ft_head" else ft.alpha)


def conv_model(extra: nn.Module | None = None) -> TwoStageModel:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 2, 3, padding=1, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3), nn.Tanh()]
    body = nn.Sequential(*layers, *([extra] if extra is not None else []))
    return TwoStageModel(body, nn.Linear(3, 2), nn.Linear(3, 3))


def conv_objective(model: TwoStageModel, n: int = 9):
    gen = torch.Generator().manual_seed(3)
    data = Split(torch.randn(n, 1, 4, 4, dtype=DT, generator=gen), torch.randint(0, 2, (n,), generator=gen), torch.arange(n))
    w, u, _ = model.init_params(0, DT, torch.device("cpu"))
    weights = torch.rand(n, dtype=DT, generator=gen) * 2
    return PretrainObjective(model, data, 0.03, weights), torch.cat([w, u])


def test_ekfac_conv2d_factors_and_eigenvalues():
    model = conv_model()
    pt, x = conv_objective(model)
    st = stage_of(pt)
    fit = EKFAC.fit(st, x, batch_size=4)
    assert fit.info["layers"] == ["body.0", "body.3", "pt_head"]
    check_ekfac_against_dense_ggn(pt, x, fit, lambda name: pt.l2)
    # the conv layer's Kronecker factors, by hand: patches by loops, output gradients by the Jacobian
    conv, params = model.body[0], model.w_spec.unflatten(x[: pt.p_w])
    w8 = st.example_weights()
    padded = nn.functional.pad(pt.data.x, (1, 1, 1, 1))
    patches = torch.stack([torch.cat([padded[:, 0, 2 * r : 2 * r + 3, 2 * c : 2 * c + 3].reshape(-1, 9), torch.ones(len(w8), 1, dtype=DT)], 1)
                           for r in range(2) for c in range(2)], 1)  # (n, L=4, 10)
    a_fac = torch.einsum("n,nld,nle->de", w8, patches, patches)
    s_out = functional_call(conv, {"weight": params["0.weight"], "bias": params["0.bias"]}, (pt.data.x,))
    rest = nn.Sequential(*model.body[1:])

    def suffix(s):
        feats = functional_call(rest, {"2.weight": params["3.weight"], "2.bias": params["3.bias"]}, (s[None],))
        return functional_call(model.pt_head, model.u_spec.unflatten(x[pt.p_w :]), (feats,))[0]

    s_fac = torch.zeros(2, 2, dtype=DT)
    logits = model.pt_logits(x[: pt.p_w], x[pt.p_w :], pt.data.x)
    prob = torch.softmax(logits, 1)
    for i in range(len(w8)):
        jac = jacrev(suffix)(s_out[i]).reshape(2, 2, 4)  # (C, out, L)
        h = torch.diag(prob[i]) - torch.outer(prob[i], prob[i])
        s_fac += w8[i] * torch.einsum("col,cd,dql->oq", jac, h, jac)
    layer = fit.layers[0]
    for q, fac in ((layer.qa, a_fac), (layer.qs, s_fac)):
        rot = q.T @ fac @ q
        torch.testing.assert_close(rot - torch.diag(rot.diagonal()), torch.zeros_like(rot), rtol=0, atol=1e-12)


def test_ekfac_treats_unsupported_parameters_with_damping_only():
    model = conv_model(extra=nn.LayerNorm(3))
    pt, x = conv_objective(model)
    fit = EKFAC.fit(stage_of(pt), x, batch_size=9)
    assert fit.info["unsupported"] == ["body.5.weight", "body.5.bias"]
    b = rhs(x.numel(), 2)
    other = torch.nonzero(fit.other).flatten()
    torch.testing.assert_close(fit.solve(b, 0.07)[other], b[other] / (pt.l2 + 0.07))


@pytest.fixture(scope="module")
def trained_conv():
    """The conv model's pretraining objective at its optimum (where the Hessian is positive definite)."""
    from msif.task.training import minimize

    pt, x = conv_objective(conv_model())
    return pt, minimize(pt, x, 1e-10, 2000).params


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_pcg_is_the_dense_solve_in_fewer_products_and_one_step_beats_ekfac(trained_conv, curvature):
    """EK-FAC-preconditioned block CG on the conv model: CG's answer (the dense solve); after one iteration
    each column's A-norm error is at most EK-FAC's, since EK-FAC's solution lies in the first search block
    (Galerkin optimality). Whether it needs fewer products than plain CG depends on the model: on this
    55-parameter one it does not (the bench measures it on the CNN)."""
    pt, x = trained_conv
    damping = 1e-2
    b = rhs(x.numel(), 4)
    truth = dense_solve(pt, x, b, damping, curvature)
    opts = {"curvature": curvature, "lanczos_iters": 0}
    out = stage_solve(pt, x, b, "pcg", SolveArguments.from_config({**opts, "damping": damping, "pcg": {"tol": 1e-12, "batch_size": 4}}))
    torch.testing.assert_close(out.x, truth, rtol=1e-7, atol=1e-9)
    assert out.info["converged"] and out.info["solver"] == "pcg" and out.info["layers"] == ["body.0", "body.3", "pt_head"]
    one = stage_solve(pt, x, b, "pcg", SolveArguments.from_config({**opts, "damping": damping, "pcg": {"max_iter": 1, "batch_size": 4}}))
    ek = stage_solve(pt, x, b, "ekfac", SolveArguments.from_config({**opts, "damping": damping, "ekfac": {"batch_size": 4}}))
    a = (hessian(pt)(x) if curvature == "hessian" else dense_ggn(pt, x)) + damping * torch.eye(x.numel(), dtype=DT)

    def a_norm_error(sol):
        e = sol - truth
        return (e * (a @ e)).sum(0).sqrt()

    assert one.info["hvps"] == 4 and not one.info["converged"]
    assert (a_norm_error(one.x) <= a_norm_error(ek.x) * (1 + 1e-9)).all(), (a_norm_error(one.x), a_norm_error(ek.x))
    assert (a_norm_error(one.x) < 0.99 * a_norm_error(ek.x)).all()  # and strictly better here


def test_solver_names_and_options():
    assert stage_solvers("cg") == ("cg", "cg") and stage_solvers("cg+ekfac") == ("cg", "ekfac")
    with pytest.raises(ValueError, match=r"solver='cg\+newton'.*\['exact', 'cg', 'lissa', 'arnoldi', 'ekfac', 'pcg'\]"):
        stage_solvers("cg+newton")
    with pytest.raises(ValueError, match=r"influence\.arnoldi\.iters=5 < influence\.arnoldi\.rank=10"):
        ArnoldiOptions(rank=10, iters=5)
    with pytest.raises(ValueError, match=r"influence\.lissa\.depth=0: must be > 0"):
        LissaOptions(depth=0)
    for name in ("ekfac", "pcg"):
        with pytest.raises(ValueError, match=rf"solver='{name}' needs a fitted EK-FAC"):
            solve(name, lambda v: v, torch.ones(3, 1, dtype=DT), 0.0)


def test_schema_defaults_equal_the_option_defaults():
    from conftest import ROOT

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    influence = schema["properties"]["influence"]["properties"]
    for name, cls in (("cg", CGOptions), ("lissa", LissaOptions), ("arnoldi", ArnoldiOptions), ("ekfac", EKFACOptions),
                      ("pcg", PCGOptions)):
        keys = influence[name]["properties"]
        assert {k: v["default"] for k, v in keys.items()} == {k: getattr(cls(), k) for k in keys}, name
        assert all(v.get("description") for v in keys.values())
    assert influence["curvature"]["default"] == "hessian"


def test_nan_in_a_test_gradient_is_named(problem):
    data, _, stages = problem
    ft, theta = stages["fixed"]
    test = Split(data.finetune_test.x.clone(), data.finetune_test.y, torch.tensor([70, 71, 72]))
    test.x[1, 0] = math.nan
    with pytest.raises(NonFiniteError, match=r"test-loss gradients.*test example ids \[71\]"):
        finetune_ihvp(ft, theta, test, "cg")


def test_nan_right_hand_side_and_nan_solutions_are_reported():
    h = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=DT))
    b = torch.ones(3, 2, dtype=DT)
    bad_b = b.clone()
    bad_b[2, 1] = math.inf
    with pytest.raises(NonFiniteError, match=r"right-hand side.*columns \[1\]"):
        solve("cg", lambda v: h @ v, bad_b, 0.0)
    nan_h = h.clone()
    nan_h[0, 0] = math.nan
    for out in (cg(lambda v: nan_h @ v, b, max_iter=5), lissa(lambda v: nan_h @ v, b, scale=4.0, depth=5),
                arnoldi(lambda v: nan_h @ v, b, rank=1, iters=2)):
        assert not out.info["converged"] and out.info["non_finite_columns"] == [0, 1], out.info


def test_workflow_accepts_per_stage_solver_names(tmp_path, workflow_dir):
    """'cg+ekfac' is a wildcard value like any other (escaped in the constraint); only exact pretraining needs the Hessian."""
    from conftest import snakemake

    cfg = yaml.safe_load((workflow_dir / ".test/config/config.yaml").read_text())
    cfg["influence"]["solvers"] = ["cg+ekfac", "lissa"]
    cfg["validation"]["reference_solver"] = "cg+ekfac"
    cfg["influence"]["group"]["enabled"] = False  # multi_stage_group needs the exact reference (test_group checks the refusal)
    path = tmp_path / "solvers.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake(workflow_dir, "-n", "--configfile", str(path), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "influence/fixed/cg+ekfac/scores.pt" in out and "influence/updated/lissa/pretrain_ihvp.pt" in out
    assert "pretrain_hessian.pt" not in out


def test_ekfac_eigenvalue_correction_in_chunks_is_the_same(monkeypatch):
    import msif.core.ekfac

    pt, x = conv_objective(conv_model())
    whole = EKFAC.fit(stage_of(pt), x, batch_size=9)
    monkeypatch.setattr(msif.core.ekfac, "CHUNK_ELEMENTS", 1)  # one example at a time
    chunked = EKFAC.fit(stage_of(pt), x, batch_size=9)
    for a, b in zip(whole.layers, chunked.layers, strict=True):
        torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=1e-12, atol=1e-15)

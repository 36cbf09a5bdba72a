"""The peers benchmark (``python -m msif.bench.peers``): aligning the peers' scores to method.md
(:mod:`msif.bench.peers.align`: units, damping, sign, layout, and the model the peers see), its tables, its run.

The conversions are checked on synthetic numbers, without any peer installed: each peer's raw score is
produced from the formula its documentation states, and must come back as msif's removal effect. The
smoke run needs no peer either (msif's own rows); the adapter tests run the peers themselves (in
.venv-peers, ``make bench-peers``) and skip where they are absent.
"""

import importlib.util
import json
import os

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from conftest import ROOT
from msif.arguments import SolveArguments
from msif.bench.peers import common
from msif.bench.peers import run as peers_run
from msif.bench.peers.align import PeerModel, PeerProblem, peer_damping, routed_cross_entropy, to_removal_effect, total_damping
from msif.bench.peers.common import COLUMNS, PEER_MODULES, PeersMissing, Settings, default_dtype, require
from msif.bench.peers.report import markdown, ratios
from msif.influence.baselines import _pad, direct_w_gradient
from msif.influence.multi_stage import removal_effect
from msif.influence.scoring import upweight_influence
from msif.influence.stage_solve import stage_solve
from msif.task.data import Split
from msif.task.models import mlp_model
from msif.task.objectives import FinetuneObjective, PretrainObjective
from msif.task.training import minimize

N, P, T = 9, 5, 3


@pytest.fixture
def quadratic():
    """Mean Hessian H (SPD), per-example training gradients G (n, p), test gradients Fg (t, p), δ, and msif's score."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(P, P, generator=gen, dtype=torch.float64)
    h = a @ a.T / P + 0.05 * torch.eye(P, dtype=torch.float64)
    g = torch.randn(N, P, generator=gen, dtype=torch.float64)
    fg = torch.randn(T, P, generator=gen, dtype=torch.float64)
    delta = total_damping(0.01, 1e-3)
    score = fg @ torch.linalg.solve(h + delta * torch.eye(P, dtype=torch.float64), g.T) / N  # method.md: removal effect, 1/n
    return h, g, fg, delta, score


def test_total_damping_adds_the_l2_term():
    assert total_damping(0.01, 1e-3) == pytest.approx(0.011, abs=1e-15)
    with pytest.raises(ValueError, match="l2=-1"):
        total_damping(-1, 0.0)


def test_peer_damping_units():
    assert peer_damping("captum", "exact", 0.011, 600) == pytest.approx(6.6)
    for lib in ("pydvl", "dattri", "kronfluence", "msif"):
        assert peer_damping(lib, "cg", 0.011, 600) == 0.011
    assert peer_damping("dattri", "lissa", 0.011, 600, lissa_scale=20.0) == pytest.approx(0.011 / 20)
    with pytest.raises(ValueError, match="scaling"):
        peer_damping("dattri", "lissa", 0.011, 600)
    with pytest.raises(ValueError, match="library='torch-influence'"):
        peer_damping("torch-influence", "cg", 0.011, 600)


def test_inner_product_peers_become_the_removal_effect(quadratic):
    """pyDVL / kronfluence: ∇fᵀ(H + δI)⁻¹∇l (test × train); dattri: the same, train × test."""
    h, g, fg, delta, score = quadratic
    reg = peer_damping("pydvl", "exact", delta, N)
    raw = fg @ torch.linalg.solve(h + reg * torch.eye(P, dtype=torch.float64), g.T)
    torch.testing.assert_close(to_removal_effect(raw, N, "inner", "test_train"), score, rtol=1e-12, atol=0)
    torch.testing.assert_close(to_removal_effect(raw.T, N, "inner", "train_test"), score, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="layout='query_first'"):
        to_removal_effect(raw, N, "inner", "query_first")


def test_captum_summed_hessian_with_n_delta_is_the_removal_effect(quadratic):
    """captum on a summed loss: ∇fᵀ(n·H + hessian_reg·I)⁻¹∇l with hessian_reg = n·δ — the 1/n is already in it."""
    h, g, fg, delta, score = quadratic
    reg = peer_damping("captum", "exact", delta, N)
    raw = fg @ torch.linalg.solve(N * h + reg * torch.eye(P, dtype=torch.float64), g.T)
    torch.testing.assert_close(to_removal_effect(raw, N, "summed", "test_train"), score, rtol=1e-12, atol=0)


def test_dattri_lissa_damping_solves_the_same_system(quadratic):
    """dattri's recursion x ← v + (1 − d)x − Hx/s, returning x/s, with d = δ/s converges to (H + δI)⁻¹v."""
    h, g, fg, delta, score = quadratic
    s = 2.0 * float(torch.linalg.eigvalsh(h).max())
    d = peer_damping("dattri", "lissa", delta, N, lissa_scale=s)
    v, x = fg.T, fg.T.clone()
    for _ in range(20000):
        x = v + (1 - d) * x - h @ x / s
    raw = g @ (x / s)  # train × test
    torch.testing.assert_close(to_removal_effect(raw, N, "inner", "train_test"), score, rtol=1e-8, atol=0)


def test_inner_product_sign_is_the_removal_effect_of_retraining():
    """No minus sign: ∇fᵀH⁻¹∇l(z_i)/n predicts f(trained without z_i) − f(trained with all) (ridge, exact retraining)."""
    gen = torch.Generator().manual_seed(1)
    n, p, l2 = 40, 3, 0.1
    x, xt = torch.randn(n, p, generator=gen, dtype=torch.float64), torch.randn(p, generator=gen, dtype=torch.float64)
    y, yt = x @ torch.ones(p, dtype=torch.float64) + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64), 1.0

    def fit(weights):  # minimiser of 1/n Σ c_i ½(x_iᵀθ − y_i)² + l2/2 ‖θ‖² (denominator n kept)
        return torch.linalg.solve((x.T * weights) @ x / n + l2 * torch.eye(p, dtype=torch.float64), (x.T * weights) @ y / n)

    theta = fit(torch.ones(n, dtype=torch.float64))
    h = x.T @ x / n + l2 * torch.eye(p, dtype=torch.float64)
    grads = x * (x @ theta - y)[:, None]
    raw = ((xt @ theta - yt) * xt) @ torch.linalg.solve(h, grads.T)
    predicted = to_removal_effect(raw[None], n, "inner", "test_train")[0]
    actual = torch.stack([0.5 * (xt @ fit(torch.ones(n, dtype=torch.float64).index_fill(0, torch.tensor([i]), 0.0)) - yt) ** 2
                          - 0.5 * (xt @ theta - yt) ** 2 for i in range(n)])
    assert torch.corrcoef(torch.stack([predicted, actual]))[0, 1] > 0.99
    assert torch.sign(predicted[actual.abs() > 1e-3]).eq(torch.sign(actual[actual.abs() > 1e-3])).all()


def _tiny(scenario):
    torch.manual_seed(0)
    model = mlp_model(4, [3], 2, 3)
    gen = torch.Generator().manual_seed(2)
    dt = torch.float64
    x, xt = torch.randn(6, 4, generator=gen, dtype=dt), torch.randn(4, 4, generator=gen, dtype=dt)
    y, yt = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([2, 0, 1, 1])
    w, u, theta = (t.to(dt) for t in model.init_params(0, dt, torch.device("cpu")))
    w_ft = w + 0.1 * torch.randn(w.shape, generator=gen, dtype=dt)
    ft = FinetuneObjective(model, Split(x, y, torch.arange(6)), 0.01, w, scenario, 0.1)
    ft_params = theta if scenario == "fixed" else torch.cat([theta, w_ft])
    return model, torch.cat([w, u]), ft, ft_params, Split(xt, yt, torch.arange(4))


@pytest.mark.parametrize("scenario", ["fixed", "updated"])
def test_peer_model_test_loss_gradient_is_single_stage(scenario):
    """The finetuned test loss as a PeerModel loss: its gradient w.r.t. (W, U) is [∇_W f; 0] at the finetuned point."""
    model, pt_params, ft, ft_params, test = _tiny(scenario)
    theta, w_ft = ft.split(ft_params)
    shift = w_ft - pt_params[: model.w_spec.numel] if scenario == "updated" else None
    pm = PeerModel(model, pt_params, 2, theta=theta, w_shift=shift)
    names = [n for n, _ in pm.named_parameters()]
    params = dict(pm.named_parameters())

    def loss(prm, x, y):
        return routed_cross_entropy(functional_call(pm, prm, (x[None],)), y[None] + 2, 2)

    got = torch.stack([torch.cat([g[n].reshape(-1) for n in names]) for g in (grad(loss)(params, x, y) for x, y in zip(test.x, test.y, strict=True))], 1)
    want = _pad(direct_w_gradient(ft, ft_params, test), pt_params.numel())
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the peers' hooks and parameter lists see the body and the pretraining head only
    assert sum(isinstance(m, torch.nn.Linear) for m in pm.modules()) == 2
    assert pm.flat_params().numel() == pt_params.numel()


def test_peer_model_pretraining_logits_and_routed_loss():
    model, pt_params, *_ = _tiny("fixed")
    pm = PeerModel(model, pt_params, 2)
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    w, u = pt_params[: model.w_spec.numel], pt_params[model.w_spec.numel :]
    torch.testing.assert_close(pm(x), model.pt_logits(w, u, x))
    pt = PretrainObjective(model, Split(x, y, torch.arange(5)), 0.0)
    torch.testing.assert_close(routed_cross_entropy(pm(x), y, 2), pt(pt_params))
    out = torch.randn(4, 5, dtype=torch.float64)
    yy = torch.tensor([0, 3, 1, 4])
    want = torch.stack([F.cross_entropy(out[0, :2], yy[0]), F.cross_entropy(out[1, 2:], yy[1] - 2),
                        F.cross_entropy(out[2, :2], yy[2]), F.cross_entropy(out[3, 2:], yy[3] - 2)])
    torch.testing.assert_close(routed_cross_entropy(out, yy, 2, "none"), want)
    with pytest.raises(ValueError, match="reduction='avg'"):
        routed_cross_entropy(out, yy, 2, "avg")


# ---------------------------------------------------------------------------------------------
# The peers themselves (only where installed: .venv-peers)


@pytest.fixture(scope="module")
def trained():
    """A tiny pretraining problem trained to its optimum, its msif exact scores on a few query examples."""
    model, pt_params, *_ = _tiny("fixed")
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 4, generator=gen, dtype=torch.float64), torch.randint(0, 2, (30,), generator=gen)
    xq, yq = torch.randn(4, 4, generator=gen, dtype=torch.float64), torch.randint(0, 2, (4,), generator=gen)
    pt = PretrainObjective(model, Split(x, y, torch.arange(30)), 0.01)
    params = minimize(pt, pt_params, grad_tol=1e-12).params
    qpt = PretrainObjective(model, Split(xq, yq, torch.arange(4)), 0.0)
    rhs = torch.stack([grad(lambda p, i=i: PretrainObjective(model, Split(xq[i : i + 1], yq[i : i + 1], torch.arange(1)), 0.0)(p))(params)
                       for i in range(4)], 1)
    del qpt
    sol = stage_solve(pt, params, rhs, "exact", SolveArguments(damping=1e-3))
    exact = removal_effect(upweight_influence(pt, params, sol.x), 30)
    pb = PeerProblem("pretrain", PeerModel(model, params, 2), x, y, xq, yq, total_damping(0.01, 1e-3), 2)
    return pb, exact


def require_peer(library: str) -> None:
    """Skip where the peer is not installed (it lives in .venv-peers: ``make bench-peers``) -- but with ``CI`` set that is a
    failure, unless ``MSIF_SKIP_PEERS=1`` says the skip is chosen (.ci/run sets it and says so in the log): CI cannot pass
    by skipping them silently (the pattern of MSIF_REQUIRE_SLURM in test_slurm.py)."""
    if importlib.util.find_spec(PEER_MODULES[library]) is not None:
        return
    reason = f"{library} not installed (.venv-peers: make bench-peers)"
    if os.environ.get("MSIF_SKIP_PEERS") == "1":
        pytest.skip(f"{reason}; skipped by choice: MSIF_SKIP_PEERS=1")
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}: install the peers, or set MSIF_SKIP_PEERS=1 to skip them by choice", pytrace=False)
    pytest.skip(reason)


def test_missing_peer_is_a_skip_a_ci_failure_or_a_chosen_skip(monkeypatch):
    monkeypatch.setitem(PEER_MODULES, "pydvl", "no_such_peer_module_msif")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("MSIF_SKIP_PEERS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_peer("pydvl")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="MSIF_SKIP_PEERS=1"):
        require_peer("pydvl")
    monkeypatch.setenv("MSIF_SKIP_PEERS", "1")
    with pytest.raises(pytest.skip.Exception, match="skipped by choice"):
        require_peer("pydvl")


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")  # the peers' own
@pytest.mark.parametrize("library", ["pydvl", "captum", "dattri"])
def test_peer_exact_equals_msif_exact(trained, library, tmp_path):
    require_peer(library)
    pb, exact = trained
    with default_dtype(torch.float64):
        raw, scale, layout, _, _ = peers_run.PEERS[library].run(pb, Settings(), "exact", tmp_path)
    torch.testing.assert_close(to_removal_effect(torch.as_tensor(raw), pb.n, scale, layout), exact, rtol=1e-6, atol=1e-12)


def test_bench_tables_and_ratios_from_a_results_frame():
    """The docs' tables come from peers.csv: ratios are msif's time over the fastest peer (as accurate or not)."""
    rows = [("pretrain", "cg", "msif", 1.0, 2.0), ("pretrain", "cg", "pydvl", 1.0, 8.0), ("pretrain", "cg", "dattri", 0.9, 1.0),
            ("pretrain", "ekfac", "msif", 0.7, 1.0), ("pretrain", "ekfac", "kronfluence", 0.6, 4.0)]
    df = pd.DataFrame([{"problem": p, "method": m, "library": lib, "pearson_vs_exact": r, "wall_s": w, "notes": ""} for p, m, lib, r, w in rows],
                      columns=COLUMNS)
    rt = ratios(df).set_index("method")
    assert rt.loc["cg", "fastest_peer"] == "dattri" and rt.loc["cg", "msif_over_fastest"] == pytest.approx(2.0)
    assert rt.loc["cg", "fastest_as_accurate"] == "pydvl" and rt.loc["cg", "msif_over_fastest_as_accurate"] == pytest.approx(0.25)
    assert rt.loc["ekfac", "fastest_as_accurate"] == ""
    text = markdown(df)
    assert "| cg | msif | 1 |" in text and "no peer as accurate" in text
    if importlib.util.find_spec("kronfluence") is None:
        with pytest.raises(PeersMissing, match="make bench-peers"):
            require("kronfluence")


def test_every_adapter_offers_known_methods_and_the_jobs_start_with_the_reference():
    assert set(peers_run.PEERS) == set(common.LIBRARIES) - {"msif"} == set(PEER_MODULES)
    for library, adapter in peers_run.PEERS.items():
        assert set(adapter.METHODS) <= set(common.METHODS) and set(adapter.HOOK_BASED) <= set(adapter.METHODS), library
    jobs = peers_run.jobs("fixed", ["msif", "pydvl"], ["cg", "ekfac"], "exact")
    assert jobs == [("msif", "exact"), ("msif", "cg"), ("msif", "cg_columns"), ("msif", "ekfac"), ("msif", "multi_stage"),
                    ("pydvl", "cg"), ("pydvl", "ekfac")]
    assert peers_run.jobs("pretrain", ["msif"], ["cg"], "cg")[:2] == [("msif", "cg"), ("msif", "cg_columns")]


def test_smoke_run_writes_the_table_msif_rows_against_exact(tmp_path, capsys):
    """``python -m msif.bench.peers --smoke`` (no peer needed): msif's own rows on the single-stage problem, its files."""
    config = str(ROOT / "config/config.yaml")
    peers_run.main(["--config", config, "--smoke", "--libraries", "msif", "--out", str(tmp_path)])
    df = pd.read_csv(tmp_path / "peers.csv").fillna({"notes": ""})
    assert list(df.columns) == COLUMNS and set(df.problem) == {"pretrain"} and set(df.library) == {"msif"}
    rows = df.set_index("method")
    assert list(rows.index) == ["exact", "cg", "cg_columns", "lissa", "arnoldi", "ekfac", "tracin"]
    for method in ("exact", "cg", "cg_columns"):
        assert rows.loc[method, "pearson_vs_exact"] > 1 - 1e-9 and rows.loc[method, "scale"] == pytest.approx(1, abs=1e-8), method
    assert rows.loc["exact", "pearson_vs_ggn"] < 1 and not df.notes.str.startswith("failed").any()
    meta = json.loads((tmp_path / "peers.json").read_text())
    assert meta["seed"] == 0 and meta["smoke"] and meta["settings"]["n_query"] == 5
    assert (tmp_path / "peers.png").stat().st_size > 10_000
    assert "| cg | msif | 1 |" in capsys.readouterr().out
    peers_run.main(["--markdown", "--out", str(tmp_path)])
    assert capsys.readouterr().out.startswith("| method | library | Pearson vs exact |")
    peers_run.main(["--config", config, "--seed", "1", "--targets"])
    assert capsys.readouterr().out.split() == ["results/default/seed1/validation/leave_k_out.csv", "results/default/seed1/validation/lds.csv"]

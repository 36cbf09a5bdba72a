"""Group removals beyond first order: damped Newton steps through both stages (method.md, "Group removals").

For pretraining weights ``c`` (``c_i = 0`` for a removed ``z_i``, the denominator stays n), each stage's reweighted
optimum is the minimiser of the tilted objective ``Φ(x) = L'(x) − ∇L(x̂)ᵀx`` (``L'`` the stage's new objective,
``∇L(x̂)`` the trained point's residual gradient, so the empty set predicts 0), approached from the trained optimum
``x̂`` by Newton steps solved inexactly by conjugate gradients preconditioned with the trained optimum's curvature ``C``
(already factorised for the first-order scores), each step damped by a backtracking line search on ``Φ``:

    x_{j+1} = x_j − t_j d_j,   ∇²L'(x_j) d_j ≈ ∇Φ(x_j)  (≤ cg_iters PCG iterations, preconditioner (C + λI)⁻¹),
    t_j = the largest of 1, ½, …, 2⁻⁸ with Φ(x_j − t d_j) ≤ Φ(x_j) − 10⁻⁴ t ∇Φ(x_j)ᵀd_j                j = 0 .. steps−1

Pretraining: ``L' = L_pt`` with weights ``c``; finetuning: ``L' = L_ft`` anchored at the predicted ``W_pt'`` (scenario A:
``W = W_pt'`` inside the loss; B: the proximal term re-anchored at ``W_pt'``). The predicted removal effect is the test
loss evaluated exactly at the predicted finetuned parameters: ``Δ̂f_t(S) = f_t(x_steps; W_pt') − f_t(x̂_ft; W_pt)``.
PCG's first iterate is the chord step ``(C + λI)⁻¹∇Φ`` scaled by the curvature along it, so near ``x̂`` (small ε) each
step shrinks the error by O(ε) at least, as the chord did: two steps leave O(ε³). Far from ``x̂`` (large sets) the
Hessian of the reweighted problem, not the trained one's, sets the step, and the line search keeps every step a descent
of ``Φ``: the iteration converges to retraining (warm-started at ``x̂``) itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad, vjp, vmap

from msif.task.data import Split
from msif.task.objectives import FinetuneObjective, PretrainObjective, test_losses

Solver = Callable[[torch.Tensor], torch.Tensor]  # B ↦ (C + λI)⁻¹ B (columns), one stage's factorised curvature

ETA = 0.1  # PCG stops once ‖r‖_{C⁻¹} ≤ ETA ‖∇Φ‖_{C⁻¹} (an inexact Newton forcing term)
ARMIJO = 1e-4  # sufficient decrease of the line search
HALVINGS = 8  # the shortest step tried is 2⁻⁸ of the Newton step
REACH = 10.0  # a Newton direction longer than 10 chord steps is cut back (a trust region around the chord step)
MIN_STEPS = 2  # steps taken before ``tol`` may stop a stage: two keep the error O(ε³)
CONVERGED = 1e-12  # a preconditioned gradient below this fraction of the first one: converged, the stage stops


Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, one set's condition) ↦ the stage's L'(x)


@dataclass
class NewtonPaths:
    """One stage's damped Newton results for a batch of B sets: ``x`` (B, p); each set's accepted step norms; ``failed``
    (B,): the line search found no decrease of Φ (no step of 2⁻⁸ or more along the Newton direction or the chord step), and
    that set's stage stopped at its last point; each set's cost in full-batch gradients, Hessian-vector products, curvature
    solves and loss evaluations (B,)."""

    x: torch.Tensor
    norms: list[list[float]]
    failed: torch.Tensor
    gradients: torch.Tensor
    hvps: torch.Tensor
    solves: torch.Tensor
    losses: torch.Tensor


class _Batch:
    """The stage's functions over a batch of sets, each at its own point and condition (``torch.func.vmap``), and each
    set's operation counts."""

    def __init__(self, objective: Objective, residual: torch.Tensor, solve: Solver, conditions: torch.Tensor):
        self.residual, self.solve_matrix, self.conditions = residual, solve, conditions
        self.gradient = vmap(grad(objective))
        self.value = vmap(objective)
        self.hvp = vmap(lambda x, c, v: vjp(lambda y: grad(objective)(y, c), x)[1](v)[0])
        self.count = {k: torch.zeros(len(conditions), dtype=torch.long) for k in ("gradients", "hvps", "solves", "losses")}

    def tick(self, what: str, rows: torch.Tensor) -> None:
        self.count[what][rows.cpu()] += 1

    def phi(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``Φ(x) = L'(x) − ∇L(x̂)ᵀx`` of the sets ``rows`` at their points ``x``."""
        self.tick("losses", rows)
        return (self.value(x, self.conditions[rows]) - x @ self.residual).detach()

    def grad_phi(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        self.tick("gradients", rows)
        return (self.gradient(x, self.conditions[rows]) - self.residual).detach()

    def hessian_times(self, x: torch.Tensor, rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.tick("hvps", rows)
        return self.hvp(x, self.conditions[rows], v).detach()

    def solve(self, b: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``(C + λI)⁻¹ b`` of each row of ``b``: one matrix product for the batch."""
        self.tick("solves", rows)
        return self.solve_matrix(b.T).T


def newton_pcg(objective: Objective, x0: torch.Tensor, conditions: torch.Tensor, residual: torch.Tensor, solve: Solver,
               steps: int, cg_iters: int = 2, tol: float = 0.0) -> NewtonPaths:
    """Minimise each set's ``Φ(x) = objective(x, condition) − residualᵀx`` from ``x0`` by at most ``steps`` damped inexact
    Newton steps, the sets of ``conditions`` (B, …) in lockstep (each set's arithmetic and decisions its own).

    Each step solves ``∇²objective(x) d = ∇Φ(x)`` by at most ``cg_iters`` conjugate-gradient iterations preconditioned by
    ``solve`` (:func:`_pcg`), then backtracks ``t`` from 1 until Armijo's sufficient decrease holds (:func:`_line_search`);
    where no ``t`` does, the chord step ``z = solve(∇Φ)`` takes the Newton direction's place. Every PCG iterate has
    ``∇Φᵀd > 0`` (positive curvature along each direction, ``solve`` positive definite), so ``d`` descends and the search
    fails only where Φ's round-off hides the decrease: then that set's stage stops, ``failed``. A preconditioned gradient
    below ``tol`` of the first one ends a set's iteration as converged once ``MIN_STEPS`` steps are taken (below
    ``CONVERGED``, round-off level, at any step)."""
    batch = _Batch(objective, residual, solve, conditions)
    n_sets = len(conditions)
    x = x0.expand(n_sets, -1).clone()
    every = torch.arange(n_sets, device=x.device)
    f = batch.phi(x, every)
    norms: list[list[float]] = [[] for _ in range(n_sets)]
    failed = torch.zeros(n_sets, dtype=torch.bool, device=x.device)
    active, first = every, None
    for j in range(steps):
        g = batch.grad_phi(x[active], active)
        z = batch.solve(g, active)
        size = z.norm(dim=1)
        if first is None:
            first = size
        going = size > (max(tol, CONVERGED) if j >= MIN_STEPS else CONVERGED) * first[active]
        active, g, z = active[going], g[going], z[going]
        if not len(active):
            break
        xa, fa = x[active], f[active]
        d, is_chord = _pcg(batch, xa, active, g, z, cg_iters)
        t, trial = _line_search(batch, xa, active, fa, g, d)
        retry = torch.isnan(t) & ~is_chord  # no decrease along the Newton direction: along the chord step's
        if retry.any():
            d[retry] = z[retry]
            t[retry], trial[retry] = _line_search(batch, xa[retry], active[retry], fa[retry], g[retry], d[retry])
        ok = ~torch.isnan(t)
        failed[active[~ok]] = True
        step = t[ok, None] * d[ok]
        x[active[ok]] = xa[ok] - step
        f[active[ok]] = trial[ok]
        for row, size in zip(active[ok].tolist(), step.norm(dim=1).tolist(), strict=True):
            norms[row].append(size)
        active = active[ok]
        if not len(active):
            break
    return NewtonPaths(x.detach(), norms, failed, **batch.count)


def _line_search(batch: _Batch, x: torch.Tensor, rows: torch.Tensor, f: torch.Tensor, g: torch.Tensor, d: torch.Tensor):
    """Backtracking from ``t = 1``, per set: the first ``t`` of 1, ½, …, 2⁻⁸ with ``Φ(x − t d) ≤ Φ(x) − ARMIJO t gᵀd`` (up
    to Φ's round-off), and ``Φ`` there; ``t`` NaN where none has it."""
    slope = (g * d).sum(1)
    tolerance = 4 * torch.finfo(x.dtype).eps * f.abs()
    t = torch.full_like(f, float("nan"))
    trial = torch.full_like(f, float("nan"))
    searching = torch.ones_like(f, dtype=torch.bool)
    size = 1.0
    while size >= 2.0**-HALVINGS and searching.any():
        idx = searching.nonzero()[:, 0]
        value = batch.phi(x[idx] - size * d[idx], rows[idx])
        good = value <= f[idx] - ARMIJO * size * slope[idx] + tolerance[idx]
        t[idx[good]], trial[idx[good]] = size, value[good]
        searching[idx[good]] = False
        size /= 2
    return t, trial


def _pcg(batch: _Batch, x: torch.Tensor, rows: torch.Tensor, g: torch.Tensor, z: torch.Tensor, iters: int):
    """At most ``iters`` preconditioned CG iterations for each set's ``∇²L'(x) d = g`` from ``d = 0`` (``z = solve(g)``),
    the Hessian products by reverse mode. A set stops at ``rᵀz ≤ ETA² gᵀz``, at non-positive curvature (keeping its last
    iterate, at the first iteration ``z``), or before an iterate longer than ``REACH`` chord steps ``‖z‖`` (nearly flat
    curvature: a Newton step there is no local model; the first iterate is then cut back to that length). Returns ``d``
    and whether each set's ``d`` is the chord step ``z`` itself."""
    d, r, p = torch.zeros_like(g), g.clone(), z.clone()
    rz = (g * z).sum(1)
    zn = z.norm(dim=1)
    rz0, reach = rz.clone(), REACH * zn
    is_chord = torch.zeros_like(rz, dtype=torch.bool)
    live = torch.arange(len(g), device=g.device)
    for i in range(iters):
        hp = batch.hessian_times(x[live], rows[live], p[live])
        curvature = (p[live] * hp).sum(1)
        a = rz[live] / curvature
        candidate = d[live] + a[:, None] * p[live]
        flat = curvature <= 0
        far = ~flat & (candidate.norm(dim=1) > reach[live])
        if i == 0:  # the first iterate: z itself at non-positive curvature, z cut back to the reach when too far
            d[live[flat]] = z[live[flat]]
            is_chord[live[flat]] = True
            d[live[far]] = z[live[far]] * (reach[live[far]] / zn[live[far]])[:, None]
        go = ~(flat | far)
        live, hp, a, candidate = live[go], hp[go], a[go], candidate[go]
        d[live], r[live] = candidate, r[live] - a[:, None] * hp
        if i == iters - 1 or not len(live):
            break
        zl = batch.solve(r[live], rows[live])
        rz_new = (r[live] * zl).sum(1)
        go = rz_new > ETA**2 * rz0[live]
        live, zl, rz_new = live[go], zl[go], rz_new[go]
        p[live] = zl + (rz_new / rz[live])[:, None] * p[live]
        rz[live] = rz_new
        if not len(live):
            break
    return d, is_chord


@dataclass
class GroupPrediction:
    """One set's prediction: ``delta`` (n_test,) = predicted Δ test loss; each stage's accepted step norms; its cost
    (full-batch ``gradients``, ``hvps``, curvature ``solves``, and ``seconds``: its batch's time over the batch's sets);
    ``descended``: no stage's line search failed (a failed one leaves that stage at its last point, no estimate of
    retraining)."""

    delta: torch.Tensor
    pretrain_steps: list[float]
    finetune_steps: list[float]
    gradients: int
    hvps: int
    solves: int
    seconds: float
    descended: bool


class GroupEstimator:
    """The damped-Newton group estimator of one (pretraining, scenario): built once, then :meth:`predict` per batch of sets.

    ``solve_pt`` / ``solve_ft``: ``B ↦ (C + λI)⁻¹ B`` (columns) at the trained optima (pretraining over ``(W, U)``,
    finetuning over ``Θ`` or ``(Θ, W)``), the preconditioners; ``steps``: the most Newton steps per stage (2: at least
    second order; more converge to retraining); ``cg_iters``: PCG iterations per step; ``tol``: a stage stops, converged,
    once its preconditioned gradient is below ``tol`` of its first (after 2 steps at least); ``batch``: sets in lockstep.
    """

    def __init__(self, pt: PretrainObjective, pt_params: torch.Tensor, ft: FinetuneObjective, ft_params: torch.Tensor,
                 test: Split, solve_pt: Solver, solve_ft: Solver, steps: int = 2, cg_iters: int = 2, tol: float = 0.0,
                 batch: int = 64):
        if steps < 1 or cg_iters < 1 or batch < 1 or not 0 <= tol < 1:
            raise ValueError(f"steps={steps}, cg_iters={cg_iters}, tol={tol}, batch={batch}: allowed steps, cg_iters, "
                             "batch >= 1 (2 steps give second order), 0 <= tol < 1")
        self.pt, self.pt_params, self.ft, self.ft_params, self.test = pt, pt_params, ft, ft_params, test
        self.solve_pt, self.solve_ft, self.steps, self.cg_iters, self.tol = solve_pt, solve_ft, steps, cg_iters, tol
        self.batch = batch
        self.pt_residual = grad(pt)(pt_params).detach()
        self.ft_residual = grad(ft)(ft_params).detach()
        self.base = test_losses(ft, ft_params, test).detach()

    def pretrain_objective(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``L'_pt(x) = 1/n Σ_i c_i l(z_i; x) + λ_pt/2 ‖x‖²`` with one set's weights ``c``."""
        pt = self.pt
        return PretrainObjective(pt.model, pt.data, pt.l2, weights)(x)

    def finetune_objective(self, x: torch.Tensor, w_pt: torch.Tensor) -> torch.Tensor:
        """``L_ft(x; W_pt')``: scenario A with ``W = W_pt'`` inside the loss, B with the proximal term anchored at it."""
        ft = self.ft
        return FinetuneObjective(ft.model, ft.data, ft.l2, w_pt, ft.scenario, ft.alpha)(x)

    def predict(self, weights: torch.Tensor) -> list[GroupPrediction]:
        """Predicted Δ test losses when pretraining reweights its examples by each row of ``weights`` (B, n) (0 = removed,
        denominator n), ``batch`` rows at a time."""
        out: list[GroupPrediction] = []
        for rows in weights.to(self.pt_params).split(self.batch):
            out += self._predict(rows)
        return out

    def _predict(self, weights: torch.Tensor) -> list[GroupPrediction]:
        t0 = time.perf_counter()
        a = newton_pcg(self.pretrain_objective, self.pt_params, weights, self.pt_residual, self.solve_pt, self.steps,
                       self.cg_iters, self.tol)
        w_pt = a.x[:, : self.pt.p_w]
        b = newton_pcg(self.finetune_objective, self.ft_params, w_pt, self.ft_residual, self.solve_ft, self.steps,
                       self.cg_iters, self.tol)
        ft = self.ft
        with torch.no_grad():
            delta = torch.stack([test_losses(FinetuneObjective(ft.model, ft.data, ft.l2, w, ft.scenario, ft.alpha), x, self.test)
                                 for w, x in zip(w_pt, b.x, strict=True)]) - self.base
        seconds = (time.perf_counter() - t0) / len(weights)
        return [GroupPrediction(delta[i], a.norms[i], b.norms[i], int(a.gradients[i] + b.gradients[i]),
                                int(a.hvps[i] + b.hvps[i]), int(a.solves[i] + b.solves[i]), seconds,
                                not bool(a.failed[i] or b.failed[i])) for i in range(len(weights))]

    def remove(self, sets: list[list[int]]) -> list[GroupPrediction]:
        """:meth:`predict` for removing, per set, the pretraining rows it lists (``c_i = 0``)."""
        weights = torch.ones(len(sets), self.pt.n, dtype=self.pt_params.dtype, device=self.pt_params.device)
        for row, members in zip(weights, sets, strict=True):
            if members:
                row[torch.as_tensor(members, device=weights.device)] = 0.0
        return self.predict(weights)

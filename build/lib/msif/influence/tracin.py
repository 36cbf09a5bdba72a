"""TracIn (Pruthi et al. 2020) and TracIn-WE (Yeh et al. 2022) on a text classifier trained by SGD.

The classifier is the text model's finetuning path ``logits = Θ(pool(E[x]))`` with parameters
``θ = (E, Θ)`` as one flat vector ``[E (vocab·dim, row-major), Θ]``. Its SGD run saves checkpoints
``θ_c`` (the parameters at the start of epoch c) with the learning rate ``η_c`` used in that epoch.
Every score matrix has shape (n_test, n_train) and method.md's sign: **positive = proponent** (removing
the training example is predicted to raise the test loss). For TracIn that is the paper's own sign:

    TracIn(z, x)    = Σ_c η_c ∇_θ l(z; θ_c) · ∇_θ l(x; θ_c)
    TracIn-last     = the same with θ restricted to the classifier's final Linear layer
    TracIn-WE(z, x) = Σ_c η_c Σ_{w ∈ z ∩ x} ∇_{E_w} l(z; θ_c) · ∇_{E_w} l(x; θ_c)
    word score      = one term of the inner sum: how much word w of z carries the influence on x
    TracIn-WE-topk  = TracIn-WE with each example's word gradients cut to its k largest rows (by norm)
    IF-last(z, x)   = 1/m ∇_Θ' l(x)ᵀ (H_Θ' + λI)⁻¹ ∇_Θ' l(z)  at the final θ (Θ' the final layer, H of the
                      mean training loss + L2), Koh & Liang's up-weighting influence turned into a removal effect

One SGD step on z with rate η changes the test loss by ≈ −η ∇l(z)·∇l(x): z's presence lowered it, so
removing z raises it by TracIn(z, x) — proponents are positive (tests/test_tracin.py checks this).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, grad, hessian, vmap

from msif.experiments.text import PAD, TextModel
from msif.task.data import Split

log = logging.getLogger("msif")

METHODS = ("tracin", "tracin_last", "tracin_we", "tracin_we_topk", "if_last")


@dataclass
class Checkpoint:
    """Parameters ``θ_c`` at the start of an epoch and the learning rate ``η_c`` of that epoch."""

    params: torch.Tensor
    lr: float


def n_embedding(model: TextModel) -> int:
    """Entries of E in the flat parameter vector (its first block)."""
    return model.w_spec.numel


def last_layer_slice(model: TextModel) -> slice:
    """Positions of the classifier's final Linear layer in the flat ``[E, Θ]`` vector."""
    prefix, start, sl = model.ft_head.last_layer(), n_embedding(model), []
    for name, shape in zip(model.theta_spec.names, model.theta_spec.shapes, strict=True):
        size = int(np.prod(shape))
        if name.startswith(prefix):
            sl.append((start, start + size))
        start += size
    lo, hi = sl[0][0], sl[-1][1]
    if sum(b - a for a, b in sl) != hi - lo:
        raise ValueError("the final layer's parameters are not contiguous in the flat vector")
    return slice(lo, hi)


def losses(model: TextModel, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example classifier losses ``l(x_j; θ)``, unreduced, shape (N,)."""
    p_e = n_embedding(model)
    return model.ft_loss(model.ft_logits(params[:p_e], params[p_e:], x), y)


def head_l2(model: TextModel, params: torch.Tensor, l2: float) -> torch.Tensor:
    """``l2/2 ‖Θ‖²`` (the finetuning objective's L2 term; E is not decayed)."""
    return 0.5 * l2 * params[n_embedding(model) :].pow(2).sum()


def sgd(model: TextModel, params0: torch.Tensor, train: Split, epochs: int, batch_size: int, lr: float, lr_decay: float,
        l2: float, seed: int, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Checkpoint]]:
    """Mini-batch SGD on ``1/|B| Σ_{i∈B} c_i l(x_i; θ) + l2/2 ‖Θ‖²`` for ``epochs`` epochs, η_e = lr · lr_decay^e.

    The batch order is drawn from ``seed`` (one permutation per epoch). ``weights`` (R, m) trains R models
    at once (vmap), each with its own example weights c (0 = deleted; the batches keep their size, so a
    deletion removes exactly that example's steps). Returns the final parameters ((R, p), or (p,) without
    ``weights``) and, without ``weights``, the checkpoints at the start of every epoch.
    """
    single = weights is None
    c = torch.ones(1, len(train), dtype=params0.dtype, device=params0.device) if single else weights
    params = params0.expand(c.shape[0], -1).clone()

    def batch_objective(p: torch.Tensor, cb: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return (cb * losses(model, p, xb, yb)).sum() / len(yb) + head_l2(model, p, l2)

    step = vmap(grad(batch_objective), in_dims=(0, 0, None, None))
    gen = torch.Generator().manual_seed(int(seed))
    checkpoints = []
    for epoch in range(epochs):
        eta = lr * lr_decay**epoch
        if single:
            checkpoints.append(Checkpoint(params[0].clone(), eta))
        order = torch.randperm(len(train), generator=gen).to(params0.device)
        for start in range(0, len(train), batch_size):
            idx = order[start : start + batch_size]
            params = params - eta * step(params, c[:, idx], train.x[idx], train.y[idx])
        if not torch.isfinite(params).all():
            raise FloatingPointError(f"SGD diverged in epoch {epoch} (tracin.lr={lr} too large?)")
    return (params[0] if single else params), checkpoints


def per_example_grads(model: TextModel, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """``∇_θ l(x_j; θ)`` for every example, (N, p) — the dense oracle of the word-level computation."""
    def one(p, xi, yi):
        return losses(model, p, xi[None], yi[None])[0]

    g = vmap(grad(one), in_dims=(None, 0, 0))
    return torch.cat([g(params, x[i : i + batch], y[i : i + batch]) for i in range(0, len(y), batch)])


def word_gradients(model: TextModel, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Rows ``∇_{E_w} l(x_j; θ)`` for every example and word, (N, vocab, dim); zero for words not in x_j.

    Computed from the gradients at the looked-up positions, ``∂l/∂e_{j,pos}``, summed over the positions
    holding word w (E[w] enters l only through them) — never through the dense gradient of E.
    """
    p_e = n_embedding(model)
    e_w, theta = params[:p_e], params[p_e:]
    h = model.features(e_w, x).detach()
    emb, ids_ch = h[..., :-1].requires_grad_(True), h[..., -1:]

    def total(e):
        head = model.theta_spec.unflatten(theta)
        logits = functional_call(model.ft_head, head, (torch.cat([e, ids_ch], dim=-1),))
        return model.ft_loss(logits, y).sum()  # examples are independent: ∂(Σ l)/∂e_j,pos = ∂l_j/∂e_j,pos

    (pos,) = torch.autograd.grad(total(emb), emb)
    ids = x.long()
    n = ids.shape[0]
    vocab, dim = model.w_spec.shapes[0]
    valid = ids != PAD
    rows = (torch.arange(n, device=x.device)[:, None] * vocab + ids.clamp(min=0))[valid]
    out = torch.zeros(n * vocab, dim, dtype=params.dtype, device=params.device)
    out.index_add_(0, rows, pos[valid])
    return out.view(n, vocab, dim)


def top_tokens(word_grads: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each example's ``k`` word-gradient rows of largest norm (ties: lower word id), zero the rest."""
    norms = word_grads.norm(dim=-1)
    k = min(k, norms.shape[1])
    keep = torch.zeros_like(norms, dtype=torch.bool).scatter_(1, torch.topk(norms, k, dim=1, sorted=False).indices, True)
    return word_grads * (keep & (norms > 0))[..., None]


def if_last_scores(model: TextModel, params: torch.Tensor, train: Split, test_x: torch.Tensor, test_y: torch.Tensor,
                   l2: float, damping: float) -> torch.Tensor:
    """Influence function on the final layer, as a removal effect: ``1/m g_xᵀ (H + λI)⁻¹ g_z`` (n_test, m)."""
    sl = last_layer_slice(model)

    def with_last(q):
        return torch.cat([params[: sl.start], q, params[sl.stop :]])

    def objective(q):  # the mean training loss + L2 as a function of the final layer only
        p = with_last(q)
        return losses(model, p, train.x, train.y).mean() + head_l2(model, p, l2)

    q0 = params[sl]
    h = hessian(objective)(q0) + damping * torch.eye(len(q0), dtype=q0.dtype, device=q0.device)
    g_train = per_example_grads(model, params, train.x, train.y)[:, sl]
    g_test = per_example_grads(model, params, test_x, test_y)[:, sl]
    return g_test @ torch.linalg.solve(h, g_train.T) / len(train)


def tracin_scores(model: TextModel, checkpoints: list[Checkpoint], final: torch.Tensor, train: Split, test_x: torch.Tensor,
                  test_y: torch.Tensor, top_k: int, l2: float = 0.0, damping: float = 0.0, word_tests: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every method's (n_test, m) scores (IF-last at the ``final`` parameters) and, for the first ``word_tests`` test examples, TracIn-WE's
    word-level scores (word_tests, m, vocab), which sum over words to the TracIn-WE score."""
    n_t, m = len(test_y), len(train)
    vocab, _ = model.w_spec.shapes[0]
    dt, dev = checkpoints[0].params.dtype, checkpoints[0].params.device
    out = {k: torch.zeros(n_t, m, dtype=dt, device=dev) for k in METHODS if k != "if_last"}
    words = torch.zeros(word_tests, m, vocab, dtype=dt, device=dev)
    sl = last_layer_slice(model)
    for c in checkpoints:
        g_tr, g_te = per_example_grads(model, c.params, train.x, train.y), per_example_grads(model, c.params, test_x, test_y)
        out["tracin"] += c.lr * g_te @ g_tr.T
        out["tracin_last"] += c.lr * g_te[:, sl] @ g_tr[:, sl].T
        w_tr, w_te = word_gradients(model, c.params, train.x, train.y), word_gradients(model, c.params, test_x, test_y)
        out["tracin_we"] += c.lr * torch.einsum("tvd,nvd->tn", w_te, w_tr)
        out["tracin_we_topk"] += c.lr * torch.einsum("tvd,nvd->tn", top_tokens(w_te, top_k), top_tokens(w_tr, top_k))
        if word_tests:
            words += c.lr * torch.einsum("tvd,nvd->tnv", w_te[:word_tests], w_tr)
    out["if_last"] = if_last_scores(model, final, train, test_x, test_y, l2, damping)
    return out, words

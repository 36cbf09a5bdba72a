"""Scoring: per-example dot products of a query ``s`` with every pretraining example's gradient, in batches and shards.

    upweight[t, i] = -sᵀ ∇l(z_i)            (method.md step 4)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch.func import grad, jvp, vmap

from msif.core.layers import LowRankQuery, find_layers, layer_positions, per_example_dots
from msif.task.data import Split
from msif.task.objectives import PretrainObjective, pretrain_losses, stage_of

log = logging.getLogger(__name__)


def per_example_grads(pt: PretrainObjective, params: torch.Tensor, data: Split, batch_size: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """Stream ``∇l(z_i)`` (unregularised, w.r.t. (W, U)) in batches: yields (rows, grads (b, p))."""

    def one(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w, u = pt.split(p)
        return pretrain_losses(pt.model, w, u, x[None], y[None])[0]

    per_example = vmap(grad(one), in_dims=(None, 0, 0))
    for start in range(0, len(data), batch_size):
        rows = slice(start, min(start + batch_size, len(data)))
        yield rows, per_example(params, data.x[rows], data.y[rows])


def shard_rows(n: int, batch_size: int, shards: int, shard: int) -> slice:
    """Rows of pretraining shard ``shard`` of ``shards``: a contiguous run of *whole* batches of ``batch_size``.

    The ⌈n / batch_size⌉ batches are dealt out as evenly as possible (shard j gets batches
    ⌊jB/S⌋ .. ⌊(j+1)B/S⌋ − 1). Every shard computes exactly the batches the unsharded job computes,
    so the merged scores are bitwise equal to unsharded ones.
    """
    n_batches = -(-n // batch_size)
    if not 1 <= shards <= n_batches:
        raise ValueError(f"influence.shards={shards}: allowed 1..{n_batches} (the {n} pretraining examples make {n_batches} "
                         f"batches of influence.batch_size={batch_size}; a shard holds whole batches)")
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard}: allowed 0..{shards - 1} (influence.shards={shards})")
    lo, hi = n_batches * shard // shards, n_batches * (shard + 1) // shards
    return slice(lo * batch_size, min(hi * batch_size, n))


DOT_METHODS = ("auto", "jvp", "layers", "vmap")
# Measured on the scale CNN (bench-scale, 2,000 examples, a loaded machine): one JVP per test column costs
# 0.25-0.6 epochs, the per-layer per-example gradients 7-10 epochs plus ~0.13 per column: forward mode wins
# up to some 12-28 columns.
JVP_MAX_COLUMNS = 16


def upweight_influence(pt: PretrainObjective, params: torch.Tensor, s: torch.Tensor, batch_size: int = 256,
                       rows: slice | None = None, method: str = "auto", query_rank: int | None = None) -> torch.Tensor:
    """Koh & Liang's ``I_up,loss(z_i, x_t) = −sᵀ ∇l(z_i)``, shape (n_test, n_pretrain), streamed over z.

    ``rows`` (from :func:`shard_rows`) restricts z to one shard: shape (n_test, rows), the same numbers as
    those columns of the unsharded result. Memory: one batch of per-example gradients (batch_size × p).
    ``method``: ``layers`` builds each batch's per-example gradients from the Linear/Conv2d layers' inputs
    and output gradients of one forward + backward (:func:`msif.core.layers.per_example_dots`); ``vmap``
    differentiates every example separately (``torch.func.vmap`` of ``grad``; any model); ``auto``:
    ``jvp`` when ``s`` has at most ``JVP_MAX_COLUMNS`` columns (:func:`upweight_influence_jvp`), else
    ``layers`` when every parameter sits in such a layer, else ``vmap``.

    ``query_rank`` (``influence.query_rank``; None: exact): each layer's block of every column of ``s``
    is truncated to rank r first (:class:`msif.core.layers.LowRankQuery`), so a position of a layer costs
    r·(out + in) multiply-adds per column instead of out·in — only in the layers where that is fewer
    (the others stay exact); needs the ``layers`` method.
    """
    rows = rows if rows is not None else slice(0, len(pt.data))
    if rows.start % batch_size:
        raise ValueError(f"rows {rows}: a shard must start at a batch boundary (a multiple of batch_size={batch_size})")
    if method not in DOT_METHODS:
        raise ValueError(f"method={method!r}: allowed {list(DOT_METHODS)}")
    if query_rank is not None and method not in ("auto", "layers"):
        raise ValueError(f"query_rank={query_rank} needs method 'layers' (or 'auto'), got {method!r}")
    if query_rank is None and (method == "jvp" or (method == "auto" and s.shape[1] <= JVP_MAX_COLUMNS)):
        return upweight_influence_jvp(pt, params, s, batch_size, rows)
    data = Split(pt.data.x[rows], pt.data.y[rows], pt.data.ids[rows])
    out = torch.empty(s.shape[1], len(data), dtype=s.dtype, device=s.device)
    if method in ("auto", "layers"):

        stage = stage_of(pt)
        layers, others, _ = find_layers(stage)
        if not others:  # every parameter in a Linear/Conv2d layer: per-example gradients from one backward per batch
            positions = layer_positions(stage, params, layers) if query_rank is not None else None
            query = LowRankQuery.of(layers, s, query_rank, positions)  # the layer blocks of s, gathered once
            if query_rank is not None:
                log.info("low-rank query of rank %d on layers %s keeps %.4f of ||s||^2", query_rank,
                         [la.name for la, cut in zip(layers, query.truncated, strict=True) if cut], query.kept)
            for start in range(0, len(data), batch_size):
                batch = slice(start, min(start + batch_size, len(data)))
                idx = torch.arange(rows.start + batch.start, rows.start + batch.stop, device=pt.data.x.device)
                out[:, batch] = -per_example_dots(stage, params, layers, query, idx)
            return out
        if method == "layers" or query_rank is not None:
            need = "method='layers'" if query_rank is None else f"query_rank={query_rank} (the low-rank query)"
            raise ValueError(f"{need} needs every parameter in a Linear/Conv2d layer: parameters {others[:5]} are not; "
                             "use method 'vmap' or 'auto' with query_rank null")
    for batch, g in per_example_grads(pt, params, data, batch_size):
        out[:, batch] = -(g @ s).T
    return out


def upweight_influence_jvp(pt: PretrainObjective, params: torch.Tensor, s: torch.Tensor, batch_size: int = 256,
                           rows: slice | None = None) -> torch.Tensor:
    """The same ``−sᵀ∇l(z_i)`` as :func:`upweight_influence`, as forward-mode products: for each test column
    ``s_t``, one JVP of the batch's loss vector ``(l(z_i))_i`` in the direction ``s_t`` gives ``∇l(z_i)·s_t`` for
    every example of the batch. Never forms per-example gradients (memory: the batch's activations × t);
    costs about one forward pass per test column, so it pays only for very few test examples.
    """

    rows = rows if rows is not None else slice(0, len(pt.data))
    x, y = pt.data.x[rows], pt.data.y[rows]
    out = torch.empty(s.shape[1], len(y), dtype=s.dtype, device=s.device)
    for start in range(0, len(y), batch_size):
        batch = slice(start, min(start + batch_size, len(y)))

        def losses(p: torch.Tensor, xb=x[batch], yb=y[batch]) -> torch.Tensor:
            w, u = pt.split(p)
            return pretrain_losses(pt.model, w, u, xb, yb)

        out[:, batch] = -vmap(lambda v, f=losses: jvp(f, (params,), (v,))[1], in_dims=1)(s)
    return out


def merge_shards(parts: list[tuple[slice, torch.Tensor]], n: int) -> torch.Tensor:
    """Concatenate shard results ``(rows, scores (n_test, rows))`` into (n_test, n); the shards must tile 0..n exactly."""
    parts = sorted(parts, key=lambda p: p[0].start)
    start = 0
    for rows, part in parts:
        if rows.start != start or part.shape[1] != rows.stop - rows.start:
            raise ValueError(f"shards do not tile the {n} pretraining examples: expected a shard starting at row {start}, "
                             f"got rows {rows.start}..{rows.stop} holding {part.shape[1]} columns")
        start = rows.stop
    if start != n:
        raise ValueError(f"shards cover rows 0..{start} of {n} pretraining examples")
    return torch.cat([part for _, part in parts], dim=1)



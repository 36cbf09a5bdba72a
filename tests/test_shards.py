"""Sharded scores: a score job split over the pretraining set gives bitwise the unsharded matrix.

The oracle for the numbers themselves is one autograd gradient per pretraining example (no vmap, no
batches): ``score[t, i] = sᵀ∇l(z_i) / n``.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from msif import io
from msif.experiments.fashion_mnist import cnn_model
from msif.influence.multi_stage import removal_effect
from msif.influence.scoring import merge_shards, shard_rows, upweight_influence, upweight_influence_jvp
from msif.steps import influence as influence_steps
from msif.task.data import Split, TwoStageData
from msif.task.models import mlp_model
from msif.task.objectives import PretrainObjective, pretrain_losses, stage_of


def looped_upweight(pt: PretrainObjective, params: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``−sᵀ∇l(z_i)`` with one plain autograd gradient per example."""
    out = torch.empty(s.shape[1], pt.n, dtype=s.dtype)
    for i in range(pt.n):
        p = params.detach().requires_grad_(True)
        w, u = pt.split(p)
        (g,) = torch.autograd.grad(pretrain_losses(pt.model, w, u, pt.data.x[i : i + 1], pt.data.y[i : i + 1])[0], p)
        out[:, i] = -(g @ s)
    return out


def sharded(pt, params, s, batch_size: int, shards: int) -> torch.Tensor:
    parts = []
    for j in range(shards):
        rows = shard_rows(pt.n, batch_size, shards, j)
        parts.append((rows, upweight_influence(pt, params, s, batch_size, rows)))
    return merge_shards(parts, pt.n)


def test_shard_rows_tile_whole_batches():
    for n, b in ((100, 7), (64, 16), (5, 5)):
        n_batches = -(-n // b)
        for shards in range(1, n_batches + 1):
            rows = [shard_rows(n, b, shards, j) for j in range(shards)]
            assert rows[0].start == 0 and rows[-1].stop == n
            assert all(r.start % b == 0 and r.stop > r.start for r in rows)
            assert all(a.stop == c.start for a, c in itertools.pairwise(rows))
    with pytest.raises(ValueError, match=r"influence.shards=16: allowed 1..15 .*100 pretraining examples make 15 batches"):
        shard_rows(100, 7, 16, 0)
    with pytest.raises(ValueError, match=r"shard 3: allowed 0..2"):
        shard_rows(100, 7, 3, 3)


@pytest.fixture(scope="module")
def problem():
    """A float64 MLP objective on 40 examples at a random point (sharding is exact at any parameters)."""
    gen = torch.Generator().manual_seed(1)
    model = mlp_model(4, [3], 3, 2)
    pt = PretrainObjective(model, Split(torch.randn(40, 4, dtype=torch.float64, generator=gen), torch.randint(0, 3, (40,), generator=gen),
                                        torch.arange(40)), 0.05)
    params = torch.cat(model.init_params(0, torch.float64, torch.device("cpu"))[:2])
    return pt, params, torch.randn(params.numel(), 17, dtype=torch.float64, generator=gen)  # 17 columns: 'auto' is 'layers'


def test_sharded_scores_equal_unsharded_bitwise_and_the_looped_oracle(problem):
    pt, pt_params, s = problem
    full = upweight_influence(pt, pt_params, s, batch_size=7)
    torch.testing.assert_close(full, looped_upweight(pt, pt_params, s), rtol=1e-12, atol=1e-14)
    for shards in (1, 2, 3, 6):
        assert torch.equal(sharded(pt, pt_params, s, 7, shards), full), shards


def test_jvp_and_vmap_dot_products_equal_the_layerwise_ones(problem):
    """Three ways to ``∇l(z_i)·s``: per-layer per-example gradients (the default here), vmap, JVP; all equal the looped oracle."""
    pt, pt_params, s = problem
    oracle = looped_upweight(pt, pt_params, s)
    for method in ("layers", "vmap", "jvp", "auto"):
        torch.testing.assert_close(upweight_influence(pt, pt_params, s, 7, method=method), oracle, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(upweight_influence_jvp(pt, pt_params, s, 7), oracle, rtol=1e-12, atol=1e-14)
    for shards in (2, 3):
        assert torch.equal(merge_shards([(r, upweight_influence(pt, pt_params, s, 7, r, method="vmap"))
                                         for r in (shard_rows(pt.n, 7, shards, j) for j in range(shards))], pt.n),
                           upweight_influence(pt, pt_params, s, 7, method="vmap"))


def test_sharded_cnn_scores_equal_unsharded_bitwise_float32():
    """Conv2d + Linear in float32, where a different batching would change the last bits: shards hold whole batches."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(22, 1, 28, 28, generator=gen), torch.randint(0, 3, (22,), generator=gen)
    model = cnn_model([2], [4], [4], [3], 3, 2)
    pt = PretrainObjective(model, Split(x, y, torch.arange(22)), 0.01)
    w, u, _ = model.init_params(0, torch.float32, torch.device("cpu"))
    params = torch.cat([w, u])
    s = torch.randn(params.numel(), 17, generator=gen)  # 17 columns: 'auto' is 'layers'
    full = upweight_influence(pt, params, s, batch_size=4)
    torch.testing.assert_close(full, looped_upweight(pt, params, s), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(upweight_influence(pt, params, s, batch_size=4, method="vmap"), full, rtol=1e-4, atol=1e-5)
    for shards in (2, 3, 6):
        assert torch.equal(sharded(pt, params, s, 4, shards), full), shards
        assert torch.equal(sharded(pt, params, s[:, :2], 4, shards), upweight_influence(pt, params, s[:, :2], 4)), shards  # jvp


def test_merge_refuses_gaps_and_overlaps():
    part = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"expected a shard starting at row 5, got rows 6\.\.11"):
        merge_shards([(slice(0, 5), part), (slice(6, 11), part)], 11)
    with pytest.raises(ValueError, match=r"cover rows 0\.\.5 of 10"):
        merge_shards([(slice(0, 5), part)], 10)


@pytest.mark.workflow
def test_workflow_shards_merge_to_the_unsharded_scores(tiny_run, tmp_path):
    """The tiny config runs with influence.shards: 2; its merged scores.pt equals an unsharded score job bitwise."""
    seed_dir = tiny_run / "results" / "tiny" / "seed0"
    for scenario in ("fixed", "updated"):
        d = seed_dir / "influence" / scenario / "exact"
        assert sorted(p.name for p in d.glob("scores_shard*.pt")) == ["scores_shard0.pt", "scores_shard1.pt"]
        args = io.load_meta(d / "scores.pt")["args"]
        assert "shards" not in args["influence"]  # the merged matrix does not depend on how it was sharded
        config = {**args, "device": "cpu", "influence": {**args["influence"], "shards": 1}}
        out = tmp_path / f"{scenario}.pt"
        influence_steps.scores_shard(config, scenario, "exact", str(seed_dir / "data" / "splits.pt"), str(seed_dir / "train" / "pretrain.pt"),
                         str(d / "pretrain_ihvp.pt"), str(out))
        merged, unsharded = io.load_tensors(d / "scores.pt"), io.load_tensors(out)
        for key in ("scores", "test_ids", "pretrain_ids"):
            assert torch.equal(merged[key], unsharded[key]), (scenario, key)
        assert io.load_meta(d / "scores.pt")["args"] == io.load_meta(out)["args"]
        n = len(TwoStageData.from_state_dict(io.load_tensors(seed_dir / "data" / "splits.pt")).pretrain)
        assert merged["scores"].shape == (2, n)


def test_removal_effect_of_a_shard_is_its_columns(problem):
    """The 1/n of a shard is the full set's n (not the shard's size)."""
    pt, pt_params, s = problem
    rows = shard_rows(pt.n, 8, 2, 1)
    full = removal_effect(upweight_influence(pt, pt_params, s, 8), pt.n)
    assert torch.equal(removal_effect(upweight_influence(pt, pt_params, s, 8, rows), pt.n), full[:, rows])


def test_low_rank_query_is_the_truncated_query_and_exact_at_full_rank():
    """``query_rank=r``: each layer block of every column of s replaced by its best rank-r approximation (truncated
    SVD) where that saves arithmetic, then the exact dot products (looped oracle) — computed without per-example
    gradients; at full rank it is the exact score."""
    from msif.core.layers import LowRankQuery, find_layers, layer_positions

    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(13, 1, 28, 28, dtype=torch.float64, generator=gen), torch.randint(0, 3, (13,), generator=gen)
    model = cnn_model([3], [7], [7], [5], 3, 2)  # conv (3, 50) on 16 positions, Linear (5, 49), head (3, 6)
    pt = PretrainObjective(model, Split(x, y, torch.arange(13)), 0.01)
    w, u, _ = model.init_params(0, torch.float64, torch.device("cpu"))
    params = torch.cat([w, u])
    s = torch.randn(params.numel(), 4, dtype=torch.float64, generator=gen)
    stage = stage_of(pt)
    layers = find_layers(stage)[0]
    positions = layer_positions(stage, params, layers)
    assert positions == [16, 1, 1]
    # truncated where L·r·(out + d) < out·d: the conv never (16 positions), the Linear for r <= 4, the head for r = 1
    for rank, cut in ((1, [False, True, True]), (2, [False, True, False]), (4, [False, True, False]), (5, [False, False, False])):
        query = LowRankQuery.of(layers, s, rank, positions)
        assert query.truncated == cut, rank
        truncated = s.clone()
        for layer, c in zip(layers, cut, strict=True):
            if c:
                uu, sv, vh = torch.linalg.svd(layer.gather(s), full_matrices=False)
                layer.scatter(uu[..., :rank] @ torch.diag_embed(sv[:, :rank]) @ vh[:, :rank], truncated)
        low = upweight_influence(pt, params, s, 5, query_rank=rank)
        torch.testing.assert_close(low, looped_upweight(pt, params, truncated), rtol=1e-9, atol=1e-11)
        kept = sum(float(la.gather(truncated).square().sum()) for la in layers) / sum(float(la.gather(s).square().sum()) for la in layers)
        assert query.kept == pytest.approx(kept, rel=1e-10)
        if any(cut):
            assert not torch.allclose(low, looped_upweight(pt, params, s), rtol=1e-3), rank  # an approximation here
            assert query.kept < 1
    torch.testing.assert_close(upweight_influence(pt, params, s, 5, query_rank=5), looped_upweight(pt, params, s), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"query_rank=2 needs method 'layers'"):
        upweight_influence(pt, params, s, 5, method="vmap", query_rank=2)
    with pytest.raises(ValueError, match=r"query_rank=0: must be >= 1"):
        upweight_influence(pt, params, s, 5, query_rank=0)

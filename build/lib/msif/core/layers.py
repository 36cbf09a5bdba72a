"""Linear and Conv2d layers of a stage: their inputs and output gradients by hooks, and per-example dot products
with a query computed from them (exact, or with a low-rank query per layer, Grosse et al. 2023). Used by EK-FAC and by scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from msif.core.stage import Stage


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return False


@dataclass
class Layer:
    """One Kronecker-factored layer: where its weight (out, d₀) and bias (out,) sit in the flat vector, and its factors."""

    name: str
    module: nn.Module
    weight_offset: int
    out: int
    d0: int
    bias_offset: int | None
    qa: torch.Tensor | None = None
    qs: torch.Tensor | None = None
    eigenvalues: torch.Tensor | None = None
    reg: float = 0.0

    @property
    def d(self) -> int:
        return self.d0 + (self.bias_offset is not None)

    def indices(self) -> list[int]:
        idx = list(range(self.weight_offset, self.weight_offset + self.out * self.d0))
        return idx + (list(range(self.bias_offset, self.bias_offset + self.out)) if self.bias_offset is not None else [])

    def gather(self, v: torch.Tensor) -> torch.Tensor:
        """The layer's part of ``v`` (p, t) as matrices (t, out, d): ``[W | b]``."""
        w = v[self.weight_offset : self.weight_offset + self.out * self.d0].reshape(self.out, self.d0, -1)
        if self.bias_offset is not None:
            w = torch.cat([w, v[self.bias_offset : self.bias_offset + self.out, None, :]], dim=1)
        return w.permute(2, 0, 1)

    def scatter(self, m: torch.Tensor, into: torch.Tensor) -> None:
        """Write matrices (t, out, d) back into ``into`` (p, t)."""
        m = m.permute(1, 2, 0)
        into[self.weight_offset : self.weight_offset + self.out * self.d0] = m[:, : self.d0].reshape(self.out * self.d0, -1)
        if self.bias_offset is not None:
            into[self.bias_offset : self.bias_offset + self.out] = m[:, self.d0]

    def patches(self, inp: torch.Tensor) -> torch.Tensor:
        """Input patches ``a`` (n, L, d) of one call, with the trailing 1 for the bias."""
        if isinstance(self.module, nn.Conv2d):
            m = self.module
            a = F.unfold(inp, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride).transpose(1, 2)
        else:
            a = inp.reshape(inp.shape[0], -1, inp.shape[-1])
        if self.bias_offset is not None:
            a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
        return a

    def output_grads(self, g: torch.Tensor) -> torch.Tensor:
        """Output gradients (n, L, out) of one call."""
        if isinstance(self.module, nn.Conv2d):
            return g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)
        return g.reshape(g.shape[0], -1, g.shape[-1])


def find_layers(stage: Stage) -> tuple[list[Layer], list[str], torch.Tensor]:
    """The stage's supported layers, the names of its other parameters, and a mask (p,) of those."""
    layers = []
    p = sum(b.spec.numel for b in stage.blocks)
    other = torch.ones(p, dtype=torch.bool)
    for block in stage.blocks:
        offsets = _offsets(block)
        for mod_name, module in block.module.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            w, b = offsets.get(prefix + "weight"), offsets.get(prefix + "bias")
            has_bias = getattr(module, "bias", None) is not None
            if not _supported(module) or w is None or (has_bias and b is None):
                continue
            out, d0 = w[1][0], int(torch.Size(w[1][1:]).numel())
            layer = Layer(f"{block.name}.{mod_name}" if mod_name else block.name, module, w[0], out, d0, b[0] if has_bias else None)
            layers.append(layer)
            other[layer.weight_offset : layer.weight_offset + out * d0] = False
            if layer.bias_offset is not None:
                other[layer.bias_offset : layer.bias_offset + out] = False
    names = [f"{blk.name}.{n}" for blk in stage.blocks for n, (o, s) in _offsets(blk).items()
             if other[o : o + int(torch.Size(s).numel())].any()]
    return layers, names, other


def _offsets(block) -> dict[str, tuple[int, tuple]]:
    out, start = {}, block.offset
    for name, shape in zip(block.spec.names, block.spec.shapes, strict=True):
        out[name] = (start, shape)
        start += int(torch.Size(shape).numel())
    return out


def _hooked_outputs(stage: Stage, params: torch.Tensor, layers: list[Layer], idx: torch.Tensor):
    """The stage's outputs ``z`` for the examples ``idx`` (with a graph to ``params``) and, per layer, every call's
    (input, output) recorded by forward hooks (a layer used twice has two calls)."""
    calls: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in range(len(layers))}
    hooks = [layer.module.register_forward_hook(lambda _m, inp, out, i=i, calls=calls: calls[i].append((inp[0].detach(), out)))
             for i, layer in enumerate(layers)]
    try:
        with torch.enable_grad():
            p = params.detach().requires_grad_(True)
            z = stage.outputs(p, stage.x[idx])
    finally:
        for h in hooks:
            h.remove()
    return z, calls


def _layer_statistics(stage: Stage, params: torch.Tensor, layers: list[Layer], batch_size: int, visit) -> None:
    """For every batch: one forward with hooks on the layers, then one backward per output-Hessian column k;
    ``visit(layer, a (n, L, d), g (n, L, out), w (n,))`` for every layer, call and k."""
    for start in range(0, stage.n, batch_size):
        idx = torch.arange(start, min(start + batch_size, stage.n), device=stage.x.device)
        z, calls = _hooked_outputs(stage, params, layers, idx)
        factors = stage.output_hessian_factors(z, stage.y[idx])  # (n, C, C)
        w = stage.example_weights(idx)
        flat = [(i, a, s) for i, c in calls.items() for a, s in c]
        acts = [layers[i].patches(a) for i, a, _ in flat]
        for k in range(factors.shape[2]):
            if not bool(factors[:, :, k].any()):
                continue
            grads = torch.autograd.grad(z, [s for _, _, s in flat], grad_outputs=factors[:, :, k], retain_graph=True,
                                        allow_unused=True)
            for (i, _, _), a, g in zip(flat, acts, grads, strict=True):
                if g is not None:
                    visit(layers[i], a, layers[i].output_grads(g), w, k == 0)


@dataclass
class LowRankQuery:
    """Per layer, each column ``s_t`` of a query block as an (out, d) matrix ``S_t`` truncated to rank r,

        S_t ≈ U_r U_rᵀ S_t   (U_r: the top-r eigenvectors of S_t S_tᵀ, the best rank-r approximation),
        stored as  left = [u_tk]_(t,k) (out, t·r),  right = [S_tᵀ u_tk]_(t,k) (d, t·r)

    (the Gram matrix of the smaller side is factorised, ``S_t S_tᵀ = W Wᵀ + b bᵀ`` without assembling
    ``[W | b]``; for out > d the roles swap), so that
    ``⟨G_i, S_t⟩ = Σ_l g_ilᵀ S_t a_il ≈ Σ_l Σ_k (g_ilᵀ left_tk)(a_ilᵀ right_tk)`` costs L·r·(out + d) per example
    and column instead of out·d (Grosse et al. 2023's low-rank query). A layer is truncated only where
    that saves arithmetic, ``L·r·(out + d) < out·d`` (L: its positions per example); the others keep
    their exact block (``exact``). At full rank, or with ``rank=None`` (exact dot products: every layer's
    block gathered once for all batches), nothing is truncated and the scores are exact.
    ``kept``: the fraction of ``‖s‖²`` over the layers (all columns) that the truncation keeps.
    """

    rank: int | None
    t: int
    truncated: list[bool]
    left: list[torch.Tensor | None]
    right: list[torch.Tensor | None]
    exact: list[torch.Tensor | None]
    kept: float

    @classmethod
    def of(cls, layers: list[Layer], s: torch.Tensor, rank: int | None = None, positions: list[int] | None = None) -> LowRankQuery:
        """``positions``: each layer's L (:func:`layer_positions`), needed when ``rank`` is set."""
        t = s.shape[1]
        if rank is None:
            return cls(None, t, [False] * len(layers), [None] * len(layers), [None] * len(layers),
                       [layer.gather(s).reshape(t, -1) for layer in layers], 1.0)
        if rank < 1:
            raise ValueError(f"influence.query_rank={rank}: must be >= 1 (or null for exact dot products)")
        rows = s.T.contiguous()  # (t, p): every layer's weight block is then a contiguous (t, out, d0) view
        truncated, left, right, exact, kept, total = [], [], [], [], 0.0, 0.0
        for layer, n_pos in zip(layers, positions, strict=True):
            w = rows[:, layer.weight_offset : layer.weight_offset + layer.out * layer.d0].reshape(t, layer.out, layer.d0)
            b = rows[:, layer.bias_offset : layer.bias_offset + layer.out] if layer.bias_offset is not None else None
            norm2 = float(w.norm()) ** 2 + (float(b.norm()) ** 2 if b is not None else 0.0)
            total += norm2
            r = min(rank, layer.out, layer.d)
            cut = n_pos * r * (layer.out + layer.d) < layer.out * layer.d
            truncated.append(cut)
            if not cut:
                left.append(None), right.append(None), exact.append(layer.gather(s).reshape(t, -1))
                kept += norm2
            elif layer.out <= layer.d:  # Gram of the rows: S Sᵀ = W Wᵀ + b bᵀ, (t, out, out)
                gram = w @ w.transpose(1, 2) + (b[:, :, None] * b[:, None, :] if b is not None else 0.0)
                values, vecs = torch.linalg.eigh(gram)  # ascending
                u = vecs[..., -r:]  # (t, out, r)
                proj = w.transpose(1, 2) @ u  # Sᵀu, (t, d0 [+1], r)
                if b is not None:
                    proj = torch.cat([proj, (b[:, None, :] @ u)], dim=1)
                left.append(u.permute(1, 0, 2).reshape(layer.out, -1)), right.append(proj.permute(1, 0, 2).reshape(layer.d, -1))
                exact.append(None)
                kept += float(values[:, -r:].clamp_min(0).sum())
            else:  # Gram of the columns: SᵀS, (t, d, d)
                m = layer.gather(s)
                values, vecs = torch.linalg.eigh(m.transpose(1, 2) @ m)
                v = vecs[..., -r:]
                left.append((m @ v).permute(1, 0, 2).reshape(layer.out, -1)), right.append(v.permute(1, 0, 2).reshape(layer.d, -1))
                exact.append(None)
                kept += float(values[:, -r:].clamp_min(0).sum())
        return cls(rank, t, truncated, left, right, exact, kept / total if total > 0 else 1.0)


def layer_positions(stage: Stage, params: torch.Tensor, layers: list[Layer]) -> list[int]:
    """Positions L per example of every layer (summed over its calls), from one forward of the first example."""
    _, calls = _hooked_outputs(stage, params, layers, torch.arange(1, device=stage.x.device))
    return [sum(layers[i].patches(a).shape[1] for a, _ in calls[i]) for i in range(len(layers))]


def per_example_dots(stage: Stage, params: torch.Tensor, layers: list[Layer], query: LowRankQuery, idx: torch.Tensor) -> torch.Tensor:
    """``∇l(z_i)·s_t`` for the examples ``idx`` and every column of ``s`` (p, t, prepared once as
    ``query = LowRankQuery.of(layers, s[, rank, positions])``), when every parameter sits in ``layers``.

    One forward with hooks and one backward of ``Σ_i l(z_i)`` (unweighted: each example's loss depends
    only on its own outputs, so the output gradients ``g_il`` are per example); then per layer the
    per-example gradient ``G_i = Σ_l g_il a_ilᵀ`` (out, d) and its products with the columns of ``s`` as
    (out, d) matrices; the query's truncated layers take ``Σ_l Σ_k (g_ilᵀ left)(a_ilᵀ right)`` instead,
    without forming ``G_i``. No vmap over examples; shape (t, len(idx)).
    """
    z, calls = _hooked_outputs(stage, params, layers, idx)
    with torch.enable_grad():
        losses = stage.loss(z, stage.y[idx])
    flat = [(i, a, out) for i, c in calls.items() for a, out in c]
    grads = torch.autograd.grad(losses.sum(), [out for _, _, out in flat], allow_unused=True)
    t = query.t
    dots = torch.zeros(t, len(idx), dtype=params.dtype, device=params.device)
    for (i, a, _), g in zip(flat, grads, strict=True):
        if g is None:
            continue
        layer = layers[i]
        g, a = layer.output_grads(g), layer.patches(a)
        if query.truncated[i]:
            prod = (g @ query.left[i]) * (a @ query.right[i])  # (n, L, t·r)
            dots += prod.sum(1).reshape(len(idx), t, -1).sum(2).T
            continue
        per_example = torch.einsum("nlo,nld->nod", g, a)
        dots += query.exact[i] @ per_example.reshape(len(idx), -1).T
    return dots

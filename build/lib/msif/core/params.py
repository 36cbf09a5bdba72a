"""A module's parameters as one flat vector: names, shapes, and the map between the two."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamSpec:
    """Names and shapes of a module's parameters, to map between a dict and one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, module: nn.Module) -> ParamSpec:
        items = list(module.named_parameters())
        return cls(tuple(n for n, _ in items), tuple(tuple(p.shape) for _, p in items))

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        if flat.shape != (self.numel,):
            raise ValueError(f"expected a flat vector of {self.numel} parameters, got shape {tuple(flat.shape)}")
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = math.prod(shape)
            out[name] = flat[start : start + size].view(shape)
            start += size
        return out

    @staticmethod
    def flatten(module: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


"""Artifacts on disk: tensors in ``.pt`` (loaded with ``weights_only=True``) plus a JSON sidecar.

The sidecar ``<file>.json`` records the msif version, the arguments the artifact was computed under,
the shapes, and (for scores) the sign convention. Every write is atomic — a temporary file in the
same folder, then ``os.replace`` — so an interrupted job never leaves a truncated file that looks
complete; a killed job's leftover temporary file is removed by the next write of that path. The
sidecar also records the SHA-256 of the tensor file, so a ``.pt`` and a sidecar that do not belong
together (a job killed between the two renames, a file copied over another) are refused.
:func:`load_tensors` refuses an artifact computed under other arguments.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

import msif


class ArtifactMismatch(ValueError):
    """An artifact on disk was computed under other arguments than the caller expects."""


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; the temporary file is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a killed writer of this very path
        if "." not in stale.name[len(path.name) + 2 : -4]:  # not the temporary file of a longer name (its sidecar)
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sidecar(path: str | Path) -> Path:
    return Path(f"{path}.json")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], args: dict | None = None, **meta: Any) -> None:
    """Write ``tensors`` to ``path`` and the sidecar ``path.json`` (args, version, shapes, extra meta)."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    info = {
        "msif_version": msif.__version__,
        "args": args or {},
        "shapes": {k: list(v.shape) for k, v in cpu.items()},
        "dtypes": {k: str(v.dtype) for k, v in cpu.items()},
        **meta,
    }

    def write(tmp: str) -> None:
        torch.save(cpu, tmp)
        info["sha256"] = _sha256(tmp)

    atomic_write(path, write)
    write_json(sidecar(path), info)


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_tensors(path: str | Path, expect_args: dict | None = None, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Load tensors safely (``weights_only=True``); with ``expect_args``, refuse a mismatching artifact.

    Also refused (:class:`ArtifactMismatch`): a file without its sidecar, and one whose content is not
    the one its sidecar describes (SHA-256, names and shapes of the tensors).
    """
    meta = load_meta(path)
    if "sha256" in meta and _sha256(path) != meta["sha256"]:
        raise ArtifactMismatch(f"{path}: its content does not match its sidecar {sidecar(path)} (SHA-256 differs: "
                               "an interrupted or mixed-up write); recompute it")
    if expect_args is not None:
        found = meta.get("args", {})
        diff = {k: (found.get(k), v) for k, v in expect_args.items() if found.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: on disk {a!r}, expected {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ArtifactMismatch(f"{path} was computed under other arguments ({detail}); recompute it")
    tensors = torch.load(path, map_location=device, weights_only=True)
    shapes = {k: list(v.shape) for k, v in tensors.items()} if isinstance(tensors, dict) else None
    if "shapes" in meta and shapes != meta["shapes"]:
        raise ArtifactMismatch(f"{path}: tensors {shapes} but its sidecar records {meta['shapes']}; recompute it")
    return tensors


def load_meta(path: str | Path) -> dict:
    """The sidecar of ``path``; :class:`ArtifactMismatch` when it is missing or unreadable."""
    try:
        return read_json(sidecar(path))
    except FileNotFoundError:
        raise ArtifactMismatch(f"{path}: its sidecar {sidecar(path)} is missing, so what it was computed under cannot be "
                               "checked; recompute it") from None
    except json.JSONDecodeError as err:
        raise ArtifactMismatch(f"{path}: its sidecar {sidecar(path)} is not valid JSON ({err}); recompute it") from None

"""Arguments built once from a validated config: solver names, solver options, training and solve settings.

Below :mod:`msif.steps` no function sees the config dict: the steps build these frozen dataclasses and pass them down.
Solver names are listed here only (``SOLVERS``); a new solver is added here and in :func:`msif.core.solvers.solve`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

SOLVERS = ("exact", "cg", "lissa", "arnoldi", "ekfac", "pcg")
OPTION_BLOCKS = SOLVERS[1:]  # solvers with a config block influence.<name> (exact has none)
CURVATURES = ("hessian", "ggn")
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class CGOptions:
    """Config block ``influence.cg`` (defaults equal the schema's)."""

    tol: float = 1e-10
    max_iter: int = 3000
    block: bool = True

    def __post_init__(self):
        _check_positive("cg", self, ("tol", "max_iter"))


@dataclass(frozen=True)
class LissaOptions:
    """Config block ``influence.lissa`` (defaults equal the schema's)."""

    scale: float | None = None
    depth: int = 1000
    repeats: int = 1
    batch_size: int | None = 64
    seed: int = 0
    tol: float = 1e-2

    def __post_init__(self):
        _check_positive("lissa", self, ("depth", "repeats", "tol"), optional=("scale", "batch_size"))


@dataclass(frozen=True)
class ArnoldiOptions:
    """Config block ``influence.arnoldi`` (defaults equal the schema's)."""

    rank: int = 100
    iters: int = 200
    seed: int = 0
    tol: float = 1e-2

    def __post_init__(self):
        _check_positive("arnoldi", self, ("rank", "iters", "tol"))
        if self.iters < self.rank:
            raise ValueError(f"influence.arnoldi.iters={self.iters} < influence.arnoldi.rank={self.rank}: need iters >= rank")


@dataclass(frozen=True)
class EKFACOptions:
    """Config block ``influence.ekfac`` (defaults equal the schema's)."""

    batch_size: int = 256
    tol: float = 1e-2

    def __post_init__(self):
        _check_positive("ekfac", self, ("batch_size", "tol"))


@dataclass(frozen=True)
class PCGOptions:
    """Config block ``influence.pcg`` (defaults equal the schema's)."""

    tol: float = 1e-10
    max_iter: int = 3000
    batch_size: int = 256

    def __post_init__(self):
        _check_positive("pcg", self, ("tol", "max_iter", "batch_size"))


def _check_positive(block: str, obj, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    for k in keys + optional:
        v = getattr(obj, k)
        if (v is None and k in optional) or (isinstance(v, int | float) and v > 0):
            continue
        raise ValueError(f"influence.{block}.{k}={v!r}: must be > 0" + (" or null" if k in optional else ""))


def options_of(cls, block: dict | None):
    """A frozen options object from a config block, naming an unknown key and the allowed ones."""
    block = dict(block or {})
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(block) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {cls.__name__}: allowed {allowed}")
    return cls(**block)


OPTIONS = {"cg": CGOptions, "lissa": LissaOptions, "arnoldi": ArnoldiOptions, "ekfac": EKFACOptions, "pcg": PCGOptions}


@dataclass(frozen=True)
class SolveArguments:
    """How each stage solves ``(C + λI) x = b``: config block ``influence`` (defaults equal the schema's).

    ``damping`` λ (method.md's one unit: C is the curvature of the *mean* objective), ``curvature``
    ``hessian`` or ``ggn``, ``lanczos_iters`` for the extreme-eigenvalue estimate every iterative solve
    reports (0 skips it), and one options object per solver that has options.
    """

    damping: float = 0.0
    curvature: str = "hessian"
    lanczos_iters: int = 60
    cg: CGOptions = field(default_factory=CGOptions)
    lissa: LissaOptions = field(default_factory=LissaOptions)
    arnoldi: ArnoldiOptions = field(default_factory=ArnoldiOptions)
    ekfac: EKFACOptions = field(default_factory=EKFACOptions)
    pcg: PCGOptions = field(default_factory=PCGOptions)

    def __post_init__(self):
        if not self.damping >= 0:
            raise ValueError(f"influence.damping={self.damping!r}: must be >= 0")
        if self.curvature not in CURVATURES:
            raise ValueError(f"influence.curvature={self.curvature!r}: allowed {list(CURVATURES)}")
        if not (isinstance(self.lanczos_iters, int) and self.lanczos_iters >= 0):
            raise ValueError(f"influence.lanczos_iters={self.lanczos_iters!r}: must be an integer >= 0")

    @classmethod
    def from_config(cls, influence: dict | None) -> SolveArguments:
        """From the ``influence`` block; its other keys (n_test, batch_size, shards, ...) are not the solve's."""
        b = dict(influence or {})
        return cls(damping=b.get("damping", 0.0), curvature=b.get("curvature", "hessian"), lanczos_iters=b.get("lanczos_iters", 60),
                   **{name: options_of(cls_, b.get(name)) for name, cls_ in OPTIONS.items()})

    def options(self, solver: str):
        """The options object of one stage's solver (``None`` for ``exact``, which has none)."""
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r}: allowed {list(SOLVERS)}")
        return getattr(self, solver, None)


def stage_solvers(name: str) -> tuple[str, str]:
    """The (finetuning, pretraining) solvers of a solver name: ``cg`` → (cg, cg), ``cg+ekfac`` → (cg, ekfac)."""
    parts = name.split("+")
    if len(parts) > 2 or any(p not in SOLVERS for p in parts):
        raise ValueError(f"solver={name!r}: allowed one of {list(SOLVERS)}, or '<finetune>+<pretrain>' naming two of them "
                         "(e.g. 'cg+ekfac')")
    return parts[0], parts[-1]


# What each artifact depends on: the config keys recorded in its sidecar (``args``) and passed by its rule as params.
DATA_KEYS = ("seed", "experiment", "plugin", "data")
TRAIN_KEYS = ("seed", "dtype", "experiment", "plugin", "data", "model", "pretrain", "training")
FINETUNE_KEYS = (*TRAIN_KEYS, "finetune")
SOLVE_KEYS = (*FINETUNE_KEYS, *(f"influence.{k}" for k in ("n_test", "damping", "max_residual", "fail_on_bad_solve", "curvature")))


def pick(config: dict, keys: tuple[str, ...]) -> dict:
    """The top-level ``keys`` of ``config`` (dotted keys are the workflow's params, not sidecar arguments)."""
    return {k: config[k] for k in keys if "." not in k}


def solver_blocks(name: str) -> tuple[str, ...]:
    """The option blocks a solver name uses: ``cg+ekfac`` → (``influence.cg``, ``influence.ekfac``)."""
    return tuple(f"influence.{s}" for s in dict.fromkeys(name.split("+")) if s in OPTION_BLOCKS)

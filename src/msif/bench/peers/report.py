"""The peers benchmark's outputs from its table (``peers.csv``): the figure ``peers.png``, msif's time and accuracy
against the peers (:func:`ratios`) and the markdown tables (``python -m msif.bench.peers --markdown``)."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from msif.bench.base import draw
from msif.bench.peers.common import LIBRARIES, METHODS, PROBLEMS

# ---------------------------------------------------------------------------------------------
# Figure


def figure(df: pd.DataFrame, path: Path) -> None:
    """Agreement per method and library, accuracy against time (single-stage problem), multi-stage validation."""
    libs = [lib for lib in LIBRARIES if lib in set(df.library)]
    colors = {lib: plt.cm.tab10(i) for i, lib in enumerate(libs)}
    single = df[(df.problem == "pretrain") & df.pearson_vs_exact.notna()]
    validation = df[(df.problem != "pretrain") & df.lkout_pearson.notna()]
    draw(path, [partial(_agreement_bars, single, colors), partial(_accuracy_vs_time, single, colors),
                partial(_validation_bars, validation)])


def _agreement_bars(d: pd.DataFrame, colors: dict, ax) -> None:
    methods = [m for m in METHODS if m in set(d.method)]
    width = 0.8 / max(1, len(colors))
    for k, (lib, color) in enumerate(colors.items()):
        sub = d[d.library == lib].set_index("method")
        xs = [i + k * width for i, m in enumerate(methods) if m in sub.index]
        ax.bar(xs, [sub.loc[m, "pearson_vs_exact"] for m in methods if m in sub.index], width, label=lib, color=color)
    ax.set_xticks(np.arange(len(methods)) + 0.4 - width / 2, methods)
    ax.axhline(0.999, color="k", lw=0.7, ls="--")
    ax.set(ylabel="Pearson with msif exact (pretraining test losses)", title="Agreement with the exact answer", ylim=(-0.2, 1.02))
    ax.legend(fontsize=8, loc="lower left")


def _accuracy_vs_time(d: pd.DataFrame, colors: dict, ax) -> None:
    for lib, color in colors.items():
        sub = d[d.library == lib]
        ax.scatter(sub.wall_s, sub.pearson_vs_exact, color=color, label=lib)
        for r in sub.itertuples():
            ax.annotate(r.method, (r.wall_s, r.pearson_vs_exact), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="wall time incl. fit [s]", ylabel="Pearson with msif exact", title="Accuracy vs cost (single-stage problem)")
    if (d.wall_s > 0).any():
        ax.set_xscale("log")


def _validation_bars(v: pd.DataFrame, ax) -> None:
    keys = list(v.drop_duplicates(["library", "method"])[["library", "method"]].itertuples(index=False, name=None))
    for k, scenario in enumerate(dict.fromkeys(v.problem)):
        sub = v[v.problem == scenario].set_index(["library", "method"])
        ax.bar(np.arange(len(keys)) + k * 0.4, [sub.lkout_pearson.get(key, np.nan) for key in keys], 0.4, label=f"leave-k-out, {scenario}")
    ax.set_xticks(np.arange(len(keys)) + 0.2, [f"{lib}\n{m}" for lib, m in keys], fontsize=6, rotation=90)
    ax.set(ylabel="Pearson, predicted vs retrained", title="Multi-stage validation (finetuned test losses)")
    if keys:
        ax.legend(fontsize=8)


# ---------------------------------------------------------------------------------------------
# Ratios and markdown


def ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Per method on the pretrain problem: msif's accuracy and time against the most accurate and the fastest peer."""
    d = df[(df.problem == "pretrain") & df.pearson_vs_exact.notna()]
    out = []
    for method in METHODS:
        m = d[(d.method == method) & (d.library == "msif")]
        peers = d[(d.method == method) & (d.library != "msif")]
        if m.empty or peers.empty:
            continue
        m = m.iloc[0]
        best = peers.loc[peers.pearson_vs_exact.idxmax()]
        fast = peers.loc[peers.wall_s.idxmin()]
        at_least = peers[peers.pearson_vs_exact >= m.pearson_vs_exact - 1e-3]
        eq = at_least.loc[at_least.wall_s.idxmin()] if not at_least.empty else None
        out.append({"method": method, "msif_pearson": m.pearson_vs_exact, "best_peer": best.library, "best_peer_pearson": best.pearson_vs_exact,
                    "msif_wall_s": m.wall_s, "fastest_peer": fast.library, "fastest_peer_wall_s": fast.wall_s,
                    "msif_over_fastest": m.wall_s / fast.wall_s,
                    "fastest_as_accurate": "" if eq is None else eq.library,
                    "msif_over_fastest_as_accurate": math.nan if eq is None else m.wall_s / eq.wall_s,
                    "msif_pearson_ggn": m.get("pearson_vs_ggn", math.nan),
                    "best_peer_pearson_ggn": peers.get("pearson_vs_ggn", pd.Series(dtype=float)).max()})
    return pd.DataFrame(out)


def _fmt(x, digits=3):
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"
    return str(x)


def markdown(df: pd.DataFrame, reference: str = "exact") -> str:
    """The tables of the docs: agreement and cost on the single-stage problem, the multi-stage validation, msif against the peers.
    ``reference``: the solver the agreement columns compare with (``exact``, or ``cg`` for a tight CG)."""
    if "pearson_vs_ggn" not in df:
        df = df.assign(pearson_vs_ggn=math.nan)
    return "\n".join(_agreement_table(df, reference) + _validation_table(df) + _ratio_table(df)) + "\n"


def _agreement_table(df: pd.DataFrame, reference: str) -> list[str]:
    ref = "exact" if reference == "exact" else f"msif {reference} (reference)"
    lines = [f"| method | library | Pearson vs {ref} | Spearman vs {ref} | Pearson vs exact GGN | scale | wall [s] | peak [MiB] | damping passed | notes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in df[df.problem == "pretrain"].itertuples():
        lines.append(f"| {r.method} | {r.library} | {_fmt(r.pearson_vs_exact, 5)} | {_fmt(r.spearman_vs_exact, 4)} | {_fmt(r.pearson_vs_ggn, 5)} | "
                     f"{_fmt(r.scale)} | {_fmt(r.wall_s)} | {_fmt(r.peak_mib)} | {_fmt(r.damping)} | {r.notes} |")
    return lines


def _validation_table(df: pd.DataFrame) -> list[str]:
    v = df[df.problem != "pretrain"]
    if v.empty:
        return []
    piv = v.pivot_table(index=["method", "library"], columns="problem", values=["lkout_pearson", "lds"], sort=False)
    scen = [p for p in PROBLEMS if p in set(v.problem)]
    lines = ["", "| method | library | " + " | ".join(f"leave-k-out Pearson ({s})" for s in scen) + " | "
             + " | ".join(f"LDS ({s})" for s in scen) + " |", "|---|---|" + "---|" * (2 * len(scen))]
    for (method, lib), r in piv.iterrows():
        cells = [_fmt(r.get(("lkout_pearson", s), math.nan)) for s in scen] + [_fmt(r.get(("lds", s), math.nan)) for s in scen]
        lines.append(f"| {method} | {lib} | " + " | ".join(cells) + " |")
    return lines


def _ratio_table(df: pd.DataFrame) -> list[str]:
    rt = ratios(df)
    if rt.empty:
        return []
    lines = ["", "| method | msif Pearson | best peer (Pearson) | msif wall [s] | fastest peer (wall [s]) | msif / fastest | "
             "msif / fastest at ≥ msif's accuracy | Pearson vs exact GGN: msif / best peer |", "|---|---|---|---|---|---|---|---|"]
    for r in rt.itertuples():
        eq = "no peer as accurate" if not r.fastest_as_accurate else f"{_fmt(r.msif_over_fastest_as_accurate)} ({r.fastest_as_accurate})"
        lines.append(f"| {r.method} | {_fmt(r.msif_pearson, 5)} | {r.best_peer} ({_fmt(r.best_peer_pearson, 5)}) | {_fmt(r.msif_wall_s)} | "
                     f"{r.fastest_peer} ({_fmt(r.fastest_peer_wall_s)}) | {_fmt(r.msif_over_fastest)} | {eq} | "
                     f"{_fmt(r.msif_pearson_ggn, 4)} / {_fmt(r.best_peer_pearson_ggn, 4)} |")
    return lines

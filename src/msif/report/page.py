"""The HTML report: one self-contained page (figures inlined as PNG) that opens offline.

It answers the suite's question — does predicted influence match retraining? — with the summary
table, a predicted-vs-actual scatter per scenario (identity line, fitted slope, noise-floor band),
the curvature and convergence diagnostics of every stage and solve, the top proponents and
opponents of a few test examples drawn as images, and the config and versions used.
"""

from __future__ import annotations

import html
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import yaml
from scipy import stats

import msif
from msif import io
from msif.report import text as report_text
from msif.report.html import CSS, png, table
from msif.report.tables import group_cost
from msif.validation.metrics import correlations

LOSS_UNIT_METHODS = ("multi_stage", "single_stage", "multi_stage_group")  # scores in test-loss units, so a slope means something
K_GROWTH_METHODS = ("multi_stage", "multi_stage_group")  # first order, and the group-aware method where influence.group runs it
SCENARIO_TITLES = {"fixed": "Scenario A — W fixed during finetuning", "updated": "Scenario B — W updated (proximal α)"}


def scenario_title(name: str) -> str:
    """A reader's title for a scenario name (``updated@0.1`` → Scenario B with its α)."""
    kind, _, alpha = name.partition("@")
    return f"Scenario B — W updated, α = {alpha}" if kind == "updated" and alpha else SCENARIO_TITLES.get(name, name)


def scatter_figure(lko: pd.DataFrame, summary: pd.DataFrame, scenario: str, solver: str, noise_floor: float,
                   noise_floor_seed: float = float("nan")) -> str:
    """Predicted vs actual removal effect: identity line, fitted slope, ±2·noise-floor bands (warm start; another seed); the rows
    whose retraining landed in another basin ringed, with Pearson without them in the title."""
    d = lko[(lko.scenario == scenario) & (lko.solver == solver)]
    s = summary[(summary.scenario == scenario) & (summary.solver == solver)].iloc[0]
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    lim = float(np.nanmax(np.abs(np.r_[d.predicted, d.actual]))) * 1.08 or 1.0  # a diverged retraining: actual NaN
    if np.isfinite(noise_floor_seed) and noise_floor_seed > 0:
        ax.axhspan(-2 * noise_floor_seed, 2 * noise_floor_seed, color="#fde0c5", zorder=0, label="±2 × noise (another seed)")
    if np.isfinite(noise_floor) and noise_floor > 0:
        ax.axhspan(-2 * noise_floor, 2 * noise_floor, color="0.75", zorder=0, label="±2 × noise (warm start)")
    ax.plot([-lim, lim], [-lim, lim], color="0.4", lw=1, ls="--", label="identity")
    if np.isfinite(s.slope):
        ax.plot([-lim, lim], [-lim * s.slope, lim * s.slope], color="C3", lw=1, label=f"fit: actual = {s.slope:.2f} × predicted")
    sns.scatterplot(data=d, x="predicted", y="actual", hue="selection", size="k", sizes=(20, 90), ax=ax, alpha=0.8,
                    palette={"top": "C0", "bottom": "C1", "random": "C2"})
    other = d[d.other_basin.astype(bool)] if "other_basin" in d else d.iloc[:0]
    if len(other):  # the basin check's rows, ringed: kept in the plot and the fit
        ax.scatter(other.predicted, other.actual, s=150, facecolors="none", edgecolors="k", lw=0.8, label=f"other basin ({len(other)})")
    same = f"; {s.pearson_same_basin:.3f} same basin" if len(other) and np.isfinite(s.get("pearson_same_basin", np.nan)) else ""
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="predicted Δ test loss (Σ scores)", ylabel="actual Δ test loss (retrained)",
           title=f"{scenario} / {solver}: Pearson {s.pearson:.3f}{same}, Spearman {s.spearman:.3f}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return png(fig)


def methods_figure(summary: pd.DataFrame) -> str:
    """Pearson (leave-k-out) and the warm- and cold-start LDS per method and scenario, with bootstrap 95% intervals."""
    metrics = [("pearson", "leave-k-out Pearson")] + [(c, label) for c, label in LDS_METRICS if c in summary and summary[c].notna().any()]
    d = summary[(summary.method != "multi_stage") | (summary.solver == summary.solver.iloc[0])]
    order = list(dict.fromkeys(["multi_stage", *d.method]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 0.45 * len(order) + 1.4), squeeze=False)
    for ax, (col, label) in zip(axes[0], metrics, strict=True):
        for j, (scenario, g) in enumerate(d.groupby("scenario")):
            g = g.set_index("method").reindex(order)
            y = np.arange(len(order)) + (j - 0.5) * 0.3
            lo, hi = g[f"{col}_lo"], g[f"{col}_hi"]
            err = np.vstack([(g[col] - lo).clip(lower=0), (hi - g[col]).clip(lower=0)]) if lo.notna().any() else None
            ax.errorbar(g[col], y, xerr=err, fmt="o", capsize=3, label=scenario)
        ax.set_yticks(np.arange(len(order)), order)
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set(xlabel=label, xlim=(-1.05, 1.05))  # a marker at ±1 whole
        ax.invert_yaxis()
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


LDS_METRICS = (("lds_warm", "LDS, warm start (Spearman)"), ("lds_cold", "LDS, cold start (Spearman)"))


def interval_widening(summary: pd.DataFrame) -> str:
    """One sentence: how much wider the Pearson intervals over test examples are than the old ones over removal sets,
    median and range over rows of ``(pearson_hi − pearson_lo) / (pearson_hi_iid_sets − pearson_lo_iid_sets)``."""
    if "pearson_lo_iid_sets" not in summary:
        return ""
    ratio = ((summary.pearson_hi - summary.pearson_lo) / (summary.pearson_hi_iid_sets - summary.pearson_lo_iid_sets)).to_numpy(float)
    ratio = ratio[np.isfinite(ratio)]
    if not len(ratio):
        return ""
    return (f"<p>The intervals resample test examples (clusters: the sets of one test example are nested and share its quirks); the "
            f"old intervals, which resample removal sets as if independent, are kept as <code>pearson_lo_iid_sets</code>/"
            f"<code>pearson_hi_iid_sets</code>. The new Pearson intervals are {np.median(ratio):.2f}× as wide as the old ones (median "
            f"over {len(ratio)} rows; range {ratio.min():.2f}–{ratio.max():.2f}). With few test examples (influence.n_test) an "
            "interval over them is itself rough and under-covers (docs/validation.md).</p>")


def lds_figure(lds_table: pd.DataFrame, solver: str, per_scenario: int = 3) -> str:
    """LDS by example: predicted Σ_{i∈S_j} score vs actual Δ test loss over the random subsets S_j, for the first
    test examples of the first seed, multi-stage influence with the reference solver (the LDS is their Spearman)."""

    d = lds_table[(lds_table.method == "multi_stage") & (lds_table.solver == solver)]
    if not len(d):
        return ""
    if "seed" in d:
        d = d[d.seed == d.seed.min()]
    scenarios = list(dict.fromkeys(d.scenario))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.4 * len(scenarios), 3.8), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        g = d[d.scenario == scenario]
        for t in list(dict.fromkeys(g.test_id))[:per_scenario]:
            h = g[g.test_id == t]
            rho = stats.spearmanr(h.predicted, h.actual, nan_policy="omit")[0]
            ax.scatter(h.predicted, h.actual, s=14, alpha=0.8, label=f"test {t}: Spearman {rho:.2f}")
        ax.set(xlabel="predicted Δ test loss (Σ scores over the removed half)", ylabel="actual Δ test loss (retrained)", title=scenario)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return ("<h3>LDS, example by example</h3><p>Each point is one random half of the pretraining set, retrained without the other "
            "half; the LDS of a test example is the Spearman correlation of its points (then averaged over test examples).</p>"
            + png(fig))


def as_image(x: torch.Tensor) -> torch.Tensor | None:
    """An input drawn as a 2-D image: square vectors, (H, W), or (C, H, W) averaged over channels."""
    if x.ndim == 1:
        side = round(x.numel() ** 0.5)
        return x.reshape(side, side) if side * side == x.numel() else None
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x.mean(0)
    return None


def examples_figure(data: dict, scores: torch.Tensor, test_ids: torch.Tensor, t: int, top: int) -> str:
    """A test image beside its top proponents (highest scores) and opponents (lowest), with scores."""
    x_test = as_image(data["finetune_test.x"][t])
    if x_test is None:
        return "<p class='muted'>(inputs are not images; see <code>msif show-top</code>)</p>"
    x_pt = [as_image(x) for x in data["pretrain.x"]]
    order = torch.argsort(scores[t], descending=True)
    picks = [("proponent", i) for i in order[:top].tolist()] + [("opponent", i) for i in order[-top:].flip(0).tolist()]
    fig, axes = plt.subplots(2, top + 1, figsize=(1.25 * (top + 1), 3.0))
    for row in range(2):
        axes[row, 0].axis("off")
    axes[0, 0].imshow(x_test.cpu().numpy(), cmap="gray_r")
    axes[0, 0].set_title(f"test id {int(test_ids[t])}", fontsize=8)
    axes[0, 0].axis("on")
    axes[0, 0].set(xticks=[], yticks=[])
    for j, (kind, i) in enumerate(picks):
        ax = axes[0 if kind == "proponent" else 1, 1 + j % top]
        ax.imshow(x_pt[i].cpu().numpy(), cmap="Blues" if kind == "proponent" else "Reds")
        ax.set_title(f"{scores[t, i]:+.2e}", fontsize=7)
        ax.set(xticks=[], yticks=[])
    axes[0, 1].set_ylabel("proponents", fontsize=8)
    axes[1, 1].set_ylabel("opponents", fontsize=8)
    return png(fig)


def additivity_tables(lko: pd.DataFrame) -> str:
    """Where first-order additivity breaks: median relative error |actual − predicted| / |actual| per k (top and bottom
    sets), and per test example the Pearson over its own removal sets (min / median / max over test examples)."""

    d = lko[lko.selection.isin(["top", "bottom"]) & np.isfinite(lko.actual)]
    rel = d.assign(rel=(d.actual - d.predicted).abs() / d.actual.abs()).groupby(["scenario", "solver", "k"])["rel"].median()
    keys = ["scenario", "solver"] + (["seed"] if "seed" in lko else [])
    per_test = [{**dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True)), "test_id": t,
                 "pearson": correlations(g.predicted.to_numpy(), g.actual.to_numpy())["pearson"]}
                for k, h in lko.groupby(keys) for t, g in h.groupby("test_id")]
    spread = (pd.DataFrame(per_test).groupby(["scenario", "solver"])["pearson"]
              .agg(tests="count", min="min", median="median", max="max").reset_index())
    return ("<h3>Additivity as k grows</h3><p>Median relative error |actual − predicted| / |actual| of the top-k and bottom-k "
            "sets: where it grows with k, removals interact and the sum of single-example scores stops being additive.</p>"
            + table(rel.reset_index().pivot_table(index=["scenario", "solver"], columns="k", values="rel").reset_index())
            + "<h3>Per test example</h3><p>Pearson between predicted and actual over each test example's own removal sets "
            "(every selection and k), summarised over test examples (and seeds).</p>"
            + table(spread.assign(tests=spread.tests.astype(str))))


def _diagnostics(inputs: ReportInputs) -> pd.DataFrame:
    """Gradient norm and extreme eigenvalues of each trained optimum, residual and eigenvalues of each stage-wise solve."""
    rows = []
    for name, path in [("pretrain", inputs.pretrain), *((f"finetune[{s}]", p) for s, p in inputs.finetune.items())]:
        t = io.load_meta(path)["training"]
        rows.append({"what": name, "grad norm": t["grad_norm"], "min eigenvalue": t["min_eigenvalue_lanczos"],
                     "max eigenvalue": t["max_eigenvalue_lanczos"], "residual": float("nan"), "note": "trained optimum (Lanczos)"})
    for name, path in inputs.solves.items():
        meta = io.load_meta(path)["solve"]
        step, _, rest = name.partition("[")
        solver = rest.rstrip("]").split(",")[1]
        part = solver.split("+")[0 if step == "finetune_ihvp" else -1]
        note = {"exact": "dense eigendecomposition", "cg": f"CG, {meta.get('iterations', '?')} iterations"}.get(
            part, f"{part}, {meta.get('hvps', '?')} HVPs")
        rows.append({"what": name, "grad norm": float("nan"), "min eigenvalue": meta.get("min_eigenvalue", float("nan")),
                     "max eigenvalue": meta.get("max_eigenvalue", float("nan")), "residual": meta["max_residual"], "note": note})
    return pd.DataFrame(rows)


def _summary_view(df: pd.DataFrame) -> pd.DataFrame:
    """The summary with intervals folded into one readable cell per metric."""
    def ci(v, lo, hi):
        return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else (f"{v:.3f}" if np.isfinite(v) else "—")

    return pd.DataFrame({
        "scenario": df.scenario, "method": df.method, "solver": df.solver,
        "Pearson [95% CI]": [ci(*r) for r in zip(df.pearson, df.pearson_lo, df.pearson_hi, strict=True)],
        **basin_cells(df),
        "Spearman": [f"{v:.3f}" for v in df.spearman],
        **{f"LDS {kind} [95% CI]": [ci(*r) for r in zip(df[f"lds_{kind}"], df[f"lds_{kind}_lo"], df[f"lds_{kind}_hi"], strict=True)]
           for kind in ("warm", "cold") if f"lds_{kind}" in df and (kind == "warm" or df[f"lds_{kind}"].notna().any())},
        "sets": df.n_sets.astype(str), "noise floor": [f"{v:.2e}" for v in df.noise_floor],
        "seed noise": [f"{v:.2e}" if np.isfinite(v) else "—" for v in df.get("noise_floor_seed", pd.Series(np.nan, index=df.index))],
        "slope": [f"{v:.2f}" if m in LOSS_UNIT_METHODS else "—" for v, m in zip(df.slope, df.method, strict=True)],
        "finetune test acc.": [f"{v:.3f}" if np.isfinite(v) else "—" for v in df.get("ft_test_accuracy", pd.Series(np.nan, index=df.index))],
    })


def basin_cells(df: pd.DataFrame) -> dict:
    """``Pearson same basin`` (over the sets whose retraining did not land in another basin) and ``other basin`` (how many
    did, msif.validation.basins); none for tables without the basin check."""
    if "pearson_same_basin" not in df:
        return {}
    return {"Pearson same basin": [f"{v:.3f}" if np.isfinite(v) else "—" for v in df.pearson_same_basin],
            "other basin": [str(int(v)) if np.isfinite(v) else "—" for v in df.n_other_basin]}


def basin_sentence(ms: pd.DataFrame) -> str:
    """The verdict's word on the basin check: how many sets' retraining landed in another basin, Pearson without them."""
    if "n_other_basin" not in ms or not ms.n_other_basin.notna().any():
        return ""
    n = ms.drop_duplicates("scenario").n_other_basin.fillna(0).astype(int)
    if not n.sum():
        return " Every retraining landed in the basin the influence function describes (basin check, validation.basin_ratio)."
    return (f" {n.sum()} of {int(ms.drop_duplicates('scenario').n_sets.sum())} retrainings landed in another basin (their stage moved more "
            f"than validation.basin_ratio times its first-order step; kept and flagged): without them Pearson ranges "
            f"{ms.pearson_same_basin.min():.3f}–{ms.pearson_same_basin.max():.3f}.")


def flagged_rows(lko: pd.DataFrame, limit: int = 50) -> str:
    """A warning listing the leave-k-out rows whose ``flag`` is not ``ok`` (msif.validation.health), one table row per
    (scenario, flag) with the methods (solvers) whose rows carry it, its number of rows and test ids; empty when none.
    A retraining's flag is on the row of every method scored against it, so it is listed once, not once per method."""
    if "flag" not in lko or (lko["flag"] == "ok").all():
        return ""
    every = lko["method"].astype(str) + (" (" + lko["solver"].astype(str) + ")" if "solver" in lko else "")
    bad = lko.assign(methods=every)[lko["flag"] != "ok"]
    keys = [c for c in ("scenario", "flag") if c in bad]
    groups = (bad.groupby(keys, sort=False, dropna=False)
              .agg(methods=("methods", lambda m: ", ".join(dict.fromkeys(m))), rows=("flag", "size"),
                   test_ids=("test_id", lambda t: ", ".join(map(str, sorted(set(t))[:10])) + (" …" if t.nunique() > 10 else "")))
              .reset_index().rename(columns={"test_ids": "test ids"}))
    groups["methods"] = [f"every method ({every.nunique()})" if set(m.split(", ")) == set(every) else m for m in groups["methods"]]
    more = f" (first {limit} of {len(groups)} kinds shown)" if len(groups) > limit else ""
    return (f"<div class='verdict warn'><b>{len(bad)} of {len(lko)} leave-k-out rows are flagged</b>{more}: a numerical problem "
            "upstream of them (training not converged, a saddle, a bad solve, a retraining that diverged) or a retraining that "
            "landed in another basin than the influence function describes (basin check). They are kept in "
            "the tables and plots; judge them with care. An approximate solver (ekfac, lissa, arnoldi, a truncated pcg) "
            "flags every row it scores by design: its residual is far above influence.max_residual. Row by row: "
            "validation/leave_k_out.csv.</div>" + table(groups.head(limit)))


@dataclass(frozen=True)
class ReportInputs:
    """Every file the report reads, named by the rule (the report finds nothing by itself).

    The pooled tables of all seeds; the artifacts of the first seed for examples and diagnostics:
    ``scores`` per scenario (the reference solver's), ``finetune`` per scenario, ``solves`` per
    ``"<finetune_ihvp|pretrain_ihvp>[<scenario>,<solver>]"``, and for a text run the ``tracin`` files
    (``scores``, ``train``, ``summary``).
    """

    summary: str
    leave_k_out: str
    lds: str | None
    table_md: str | None
    data: str
    pretrain: str
    finetune: dict[str, str]
    scores: dict[str, str]
    solves: dict[str, str]
    tracin: dict[str, str] | None = None
    group: list[tuple[str, str, str]] | None = None  # (scenario, seed, group.pt.json) of every seed: multi_stage_group's cost


def write_report(config: dict, inputs: ReportInputs, out: str) -> None:
    """Write the report page from the pooled validation tables and the first seed's artifacts.

    ``config`` holds the keys the page shows: ``run``, ``seeds``, ``experiment``, ``scenarios``,
    ``validation.reference_solver``, ``report`` (and ``tracin`` for a text run).
    """
    seeds = config["seeds"]
    all_rows = pd.read_csv(inputs.summary, dtype={"seed": str})
    pooled = "all" if len(seeds) > 1 else str(seeds[0])
    summary = all_rows[all_rows.seed == pooled].reset_index(drop=True)
    if "noise_floor_seed" not in summary:
        summary["noise_floor_seed"] = float("nan")
    lko = pd.read_csv(inputs.leave_k_out)
    data = io.load_tensors(inputs.data)
    parts = [header(config), verdict(summary, seeds, config["validation"].get("min_accuracy", 0.8)), flagged_rows(lko), summary_section(summary, all_rows, seeds),
             baselines_section(summary), group_cost_section(inputs.group), lds_figure(pd.read_csv(inputs.lds), config["validation"]["reference_solver"]) if inputs.lds else "",
             predicted_vs_actual_section(summary, lko), diagnostics_section(inputs, seeds),
             examples_section(config, inputs, data)]
    if config["experiment"] == "text":
        parts.append(report_text.tracin_section(config, inputs.tracin, data))
    parts += [table_section(inputs.table_md), config_section(inputs, config)]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>msif report: {html.escape(config['run'])}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    io.write_text(out, page)


def header(config: dict) -> str:
    return (f"<h1>msif report — run <code>{html.escape(config['run'])}</code></h1>"
            f"<p class='muted'>Generated {datetime.now(UTC):%Y-%m-%d %H:%M UTC} · msif {msif.__version__} · torch {torch.__version__} · "
            f"Python {platform.python_version()}</p>")


def verdict(summary: pd.DataFrame, seeds: list[int], min_accuracy: float = 0.8, target: float = 0.9) -> str:
    """The first thing a reader sees: does predicted influence match retraining, over how many sets, on models
    of what accuracy (a faithfulness figure always stands beside the accuracy of the model it explains)."""
    ms = summary[summary.method == "multi_stage"]
    over = f"seeds {', '.join(map(str, seeds))} pooled" if len(seeds) > 1 else f"seed {seeds[0]}"
    low = accuracy_flags(ms, min_accuracy)
    cls = "ok" if ms.pearson.min() >= target and not low else "warn"
    return (f"<div class='verdict {cls}'><b>Does predicted influence match retraining?</b> Over {int(summary.n_sets.iloc[0])} "
            f"leave-k-out removal sets per scenario ({over}), Pearson between predicted and actual Δ test loss ranges "
            f"{ms.pearson.min():.3f}–{ms.pearson.max():.3f} (Spearman {ms.spearman.min():.3f}–{ms.spearman.max():.3f}); "
            f"target ≥ {target}.{basin_sentence(ms)}{accuracy_sentence(ms)} Scores follow one convention: "
            f"<i>{html.escape(msif.SCORE_CONVENTION)}</i>.</div>" + "".join(low))


def accuracy_sentence(ms: pd.DataFrame) -> str:
    """The models explained: pretraining and each scenario's finetuned test accuracy (mean over seeds when pooled)."""
    if "ft_test_accuracy" not in ms or ms.ft_test_accuracy.isna().all():
        return ""
    per = ms.drop_duplicates("scenario")
    ft = ", ".join(f"{html.escape(scenario_title(r.scenario).split(' — ')[0])} {r.ft_test_accuracy:.3f}" for r in per.itertuples())
    scratch = per.get("scratch_test_accuracy", pd.Series(dtype=float))
    ref = (f" (the same architecture trained from scratch on the finetuning data: {scratch.iloc[0]:.3f})"
           if len(scratch) and np.isfinite(scratch.iloc[0]) else "")
    return (f" The models explained reach test accuracy {per.pt_test_accuracy.iloc[0]:.3f} on the pretraining task and "
            f"{ft} on the finetuning task{ref}.")


def accuracy_flags(ms: pd.DataFrame, min_accuracy: float) -> list[str]:
    """A warning per scenario whose finetuned model is below ``validation.min_accuracy`` (kept, never hidden)."""
    if "ft_test_accuracy" not in ms:
        return []
    low = ms.drop_duplicates("scenario").query("ft_test_accuracy < @min_accuracy")
    return [f"<div class='verdict warn'><b>{html.escape(scenario_title(r.scenario))}: the finetuned model's test accuracy is "
            f"{r.ft_test_accuracy:.3f}, below validation.min_accuracy = {min_accuracy:g}.</b> Its attributions are validated "
            "below like the others, but they explain the predictions of a model that has not learned its task.</div>"
            for r in low.itertuples()]


SUMMARY_TEXT = ("<p>Each row correlates, over all removal sets (top-k, bottom-k, random-k per test example and k), the first-order "
                "prediction Σ<sub>i∈S</sub> score[t, i] with the change of the test loss measured by retraining both stages without S; "
                "[lo, hi] are bootstrap 95% intervals over test examples (pooled rows: over (seed, test example) pairs). <i>LDS</i>: "
                "Spearman between predicted and actual test-loss changes across random subsets holding half the pretraining set, "
                "averaged over test examples; <i>warm</i>: each subset retrained from the full-data optimum (the local response the "
                "influence function approximates); <i>cold</i>: trained from fresh initialisations, averaged over "
                "validation.lds.cold_seeds seeds (the protocol of published LDS figures). "
                "<i>noise floor</i>: RMS change of the test loss when retraining on the <i>full</i> set from a perturbed warm start "
                "(how precisely retraining lands); <i>seed noise</i>: the same from a cold start under another seed (how far apart two "
                "equally valid trainings land — removal effects below it are not reproducible across trainings). <i>slope</i>: "
                "least-squares actual ≈ slope × predicted through the origin "
                "(first-order predictions underestimate larger removals: slope &gt; 1). <i>Pearson same basin</i>: the same over "
                "the sets whose retraining landed where the influence function looks (each stage within validation.basin_ratio "
                "times its first-order displacement ‖H₀⁻¹∇L<sub>S</sub>‖ of the warm start); <i>other basin</i>: how many sets "
                "did not (kept in every other column, flagged in validation/leave_k_out.csv).</p>")


def summary_section(summary: pd.DataFrame, all_rows: pd.DataFrame, seeds: list[int]) -> str:
    parts = ["<h2>Summary</h2>", SUMMARY_TEXT, interval_widening(summary), table(_summary_view(summary[summary.method == "multi_stage"]))]
    if len(seeds) > 1:
        per_seed = all_rows[(all_rows.seed != "all") & (all_rows.method == "multi_stage")]
        parts.append(f"<h3>Per seed</h3><p>Each seed is a full replicate (data split, initialisation, removal sets); the rows above pool "
                     f"the removal sets and LDS test examples of all {len(seeds)} seeds.</p>")
        view = _summary_view(per_seed)
        view.insert(0, "seed", per_seed.seed.to_numpy())
        parts.append(table(view))
    return "".join(parts)


def group_cost_section(sidecars: list[tuple[str, str, str]] | None) -> str:
    """``multi_stage_group``'s cost per removal set against a first-order score's test column (rule group_predictions)."""
    cost = group_cost(sidecars or [])
    if cost.empty:
        return ""
    return ("<h3>What multi_stage_group costs</h3><p>Per removal set, both stages, against one first-order test column (every "
            "test column batched), both measured in the same job on the same factorisations; a set whose line search failed "
            "is predicted by first order (method.md, Group removals).</p>" + table(cost))


def baselines_section(summary: pd.DataFrame) -> str:
    if not (summary.method != "multi_stage").any():
        return ""
    return ("<h2>Multi-stage influence against baselines</h2><p>The same removal sets and LDS subsets, scored by each method. "
            "<i>single_stage</i>: pretraining Hessian only, finetuning treated as frozen (g = ∇<sub>W</sub>f); <i>grad_dot</i>: "
            "gradient dot product, no Hessian; <i>representation</i>: cosine similarity of pretrained features; <i>random</i>. "
            + ("<i>multi_stage_group</i> is not a baseline: multi-stage influence beyond first order (damped Newton steps through "
               "both stages on each set, influence.group), scored on the same sets. " if (summary.method == "multi_stage_group").any()
               else "")
            + "The removal sets were chosen by multi-stage influence, so leave-k-out favours it; LDS uses random subsets and "
            "is the fair comparison.</p>" + methods_figure(summary)
            + table(_summary_view(summary.sort_values(["scenario", "lds_warm", "pearson"], ascending=[True, False, False]))))


def predicted_vs_actual_section(summary: pd.DataFrame, lko: pd.DataFrame) -> str:
    """The scatter per scenario and solver, and how first-order accuracy changes with k."""
    ms = summary[summary.method == "multi_stage"]
    by_k = k_growth(lko)
    lko = lko[lko.method == "multi_stage"] if "method" in lko else lko
    parts = ["<h2>Predicted vs actual</h2><div class='grid'>"]
    parts += [scatter_figure(lko, ms, row.scenario, row.solver, row.noise_floor, row.noise_floor_seed) for _, row in ms.iterrows()]
    parts.append("</div>")
    parts.append("<h3>First-order accuracy as k grows</h3><p>Median of actual / predicted per selection and k "
                 "(1 = exact; random sets have small predictions, so their ratio is noisy). <i>multi_stage_group</i> "
                 "(influence.group): the group-aware damped-Newton prediction of each set, on the same sets, which first order "
                 "chose.</p>")
    parts.append(table(by_k))
    parts.append(additivity_tables(lko))
    return "".join(parts)


def k_growth(lko: pd.DataFrame) -> pd.DataFrame:
    """Median actual / predicted per scenario, method (:data:`K_GROWTH_METHODS`), solver, selection (rows) and k (columns)."""
    d = lko[lko.method.isin(K_GROWTH_METHODS)] if "method" in lko else lko.assign(method="multi_stage")
    ratio = d.assign(ratio=d.actual / d.predicted).groupby(["scenario", "method", "solver", "selection", "k"])["ratio"].median()
    return ratio.reset_index().pivot_table(index=["scenario", "method", "solver", "selection"], columns="k", values="ratio").reset_index()


def diagnostics_section(inputs: ReportInputs, seeds: list[int]) -> str:
    return ("<h2>Curvature and convergence</h2><p>Every Hessian that is inverted should be positive definite at a true minimum "
            "(smallest eigenvalue &gt; 0, after damping); a negative one means a saddle, where influence is unreliable. "
            "Residual: ‖(H + λI)x − b‖ / ‖b‖ of each stage-wise solve." + (f" Seed {seeds[0]}." if len(seeds) > 1 else "") + "</p>"
            + table(_diagnostics(inputs), "{:.3g}"))


def examples_section(config: dict, inputs: ReportInputs, data: dict) -> str:
    """Top proponents and opponents of the first ``report.example_tests`` test examples, per scenario."""
    ref, r = config["validation"]["reference_solver"], config["report"]
    parts = [f"<h2>Top proponents and opponents</h2><p>Pretraining examples whose removal is predicted to raise (proponents, blue) "
             f"or lower (opponents, red) the test loss most; solver {html.escape(ref)}, seed {config['seeds'][0]}. Titles are scores "
             "(predicted Δ test loss).</p>"]
    vocab = io.load_meta(inputs.tracin["scores"])["vocab"] if config["experiment"] == "text" else None
    for s in config["scenarios"]:
        art = io.load_tensors(inputs.scores[s])
        parts.append(f"<h3>{html.escape(scenario_title(s))}</h3>")
        for t in range(min(r["example_tests"], art["scores"].shape[0])):
            if vocab is not None:  # sentences and chunks, not images
                parts.append(report_text.pretraining_examples(data, vocab, art["scores"], art["test_ids"], t, r["top"]))
            else:
                parts.append(examples_figure(data, art["scores"], art["test_ids"], t, r["top"]))
    return "".join(parts)


def table_section(table_md: str | None) -> str:
    if not table_md:
        return ""
    return ("<h2>Table to paste</h2><p>The pooled rows above as markdown (<code>tables/paper_table.md</code>; the numbers "
            "with more digits in <code>tables/summary.csv</code>).</p><pre>" + html.escape(Path(table_md).read_text()) + "</pre>")


def config_section(inputs: ReportInputs, config: dict) -> str:
    recorded = io.load_meta(inputs.scores[config["scenarios"][0]]).get("args", {})
    return ("<h2>Configuration</h2><p class='muted'>As recorded in the sidecar of the first scenario's scores (seed "
            f"{config['seeds'][0]}); every artifact's sidecar records the keys it was computed under.</p><pre>"
            + html.escape(yaml.safe_dump(recorded, sort_keys=False)) + "</pre>")

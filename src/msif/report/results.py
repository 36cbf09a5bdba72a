"""docs/results.md, generated from workflow runs' ``validation/summary.csv``: ``python -m msif.report.results`` (``make docs``).

Every number on that page is read from a summary a workflow run wrote; none is typed by hand. Each run
(``--run NAME=RESULTS_DIR[@REPO_DIR]``) gets a section headed by the config it comes from, the git commit of
``REPO_DIR`` (:func:`msif.report.benchmarks.git_stamp`) and the date ``RESULTS_DIR/NAME/validation/summary.csv``
was written, then

* the pooled rows (``seed == "all"``), one per scenario × method (multi-stage: the reference solver, ``exact``,
  when the run has it): accuracies, Pearson with its clustered and its old iid-sets 95 % intervals, Spearman,
  slope, warm- and cold-start LDS with their intervals, and the same-basin Pearson where the run has it;
* multi-stage Pearson and finetuned test accuracy per seed, with the minimum over seeds;
* a warning line for every finetuned test accuracy below ``--min-accuracy`` (``validation.min_accuracy``);
* a text run's TracIn classifier test accuracy per seed (:func:`tracin_accuracy`);
* where the run has ``multi_stage_group`` rows in ``validation/leave_k_out.csv``: first order beside it per
  scenario and set size k (:func:`group_table`), and its cost per set (:func:`group_cost`).

Columns an older run lacks are left out; NaN is an empty cell. A run without a summary is listed as not yet run.
"""

from __future__ import annotations

import argparse
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from msif import io
from msif.report import tables
from msif.report.benchmarks import cell, git_stamp, markdown_table, written
from msif.validation.metrics import correlations

TITLE = "# Results of the workflow runs"
GENERATOR = "python -m msif.report.results"
REFERENCE = "exact"  # the reference solver of every shipped config (validation.reference_solver)
MIN_ACCURACY = 0.8  # validation.min_accuracy's default

# (header, value column, interval columns or None); a column the summary lacks is left out of the table
COLUMNS = (
    ("`pt_test_accuracy`", "pt_test_accuracy", None),
    ("`ft_test_accuracy`", "ft_test_accuracy", None),
    ("`scratch_test_accuracy`", "scratch_test_accuracy", None),
    ("`pearson`", "pearson", None),
    ("95 % CI, clustered", None, ("pearson_lo", "pearson_hi")),
    ("95 % CI, iid sets (old)", None, ("pearson_lo_iid_sets", "pearson_hi_iid_sets")),
    ("`spearman`", "spearman", None),
    ("`slope`", "slope", None),
    ("`lds_warm` [95 % CI]", "lds_warm", ("lds_warm_lo", "lds_warm_hi")),
    ("`lds_cold` [95 % CI]", "lds_cold", ("lds_cold_lo", "lds_cold_hi")),
    ("`pearson_same_basin`", "pearson_same_basin", None),
    ("`n_other_basin`", "n_other_basin", None),
)


@dataclass(frozen=True)
class Run:
    """One workflow run: its name (``results/<name>/``), the results folder holding it, the checkout it ran in."""

    name: str
    results: Path
    repo: Path

    @property
    def summary(self) -> Path:
        return self.results / self.name / "validation" / "summary.csv"

    @property
    def leave_k_out(self) -> Path:
        return self.results / self.name / "validation" / "leave_k_out.csv"

    @property
    def config(self) -> str:
        return "config/config.yaml" if self.name == "default" else f"config/{self.name}.yaml"

    @property
    def target(self) -> str:
        return "make run" if self.name == "default" else "make paper" if self.name.startswith("paper") else (
            f"snakemake --configfile {self.config}")


def parse_run(spec: str, repo: Path = Path(".")) -> Run:
    """``NAME=RESULTS_DIR[@REPO_DIR]`` → :class:`Run` (``REPO_DIR`` defaults to ``repo``)."""
    name, eq, rest = spec.partition("=")
    if not eq or not name or not rest:
        raise ValueError(f"--run {spec!r}: expected NAME=RESULTS_DIR[@REPO_DIR]")
    results, at, where = rest.partition("@")
    return Run(name, Path(results), Path(where) if at else repo)


def _number(value) -> str:
    """A cell: integers without a decimal point (counts), floats as :func:`cell` (6 significant digits), NaN empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return str(int(value))
    return cell(float(value)) if isinstance(value, int | float) else cell(value)


def _interval(lo, hi) -> str:
    return "" if all(v is None or math.isnan(v) for v in (lo, hi)) else f"[{_number(lo)}, {_number(hi)}]"


def reference_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Multi-stage rows of the reference solver only (per scenario, where that scenario has it); other methods kept."""
    ms = rows.method == "multi_stage"
    has_ref = rows[ms & (rows.solver == REFERENCE)].scenario.unique()
    return rows[~ms | (rows.solver == REFERENCE) | ~rows.scenario.isin(has_ref)]


def pooled(summary: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """The pooled rows (``seed == "all"``; a one-seed run's own rows when it has none), and whether they were pooled."""
    all_ = summary.seed == "all"
    return (summary[all_], True) if all_.any() else (summary, False)


def pooled_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per scenario × method (× solver), multi-stage first within a scenario; the :data:`COLUMNS` that exist."""
    order = {s: i for i, s in enumerate(dict.fromkeys(rows.scenario))}
    rows = rows.assign(_s=rows.scenario.map(order), _m=rows.method != "multi_stage").sort_values(["_s", "_m"], kind="stable")
    out = {"scenario": list(rows.scenario), "method": list(rows.method), "solver": list(rows.solver)}
    for header, value, bounds in COLUMNS:
        has_value, has_bounds = value in rows, bounds is not None and all(b in rows for b in bounds)
        if not (has_value or has_bounds):
            continue
        values = [_number(v) for v in rows[value]] if has_value else [""] * len(rows)
        if has_bounds:
            values = [f"{v} {_interval(lo, hi)}".strip() for v, lo, hi in zip(values, rows[bounds[0]], rows[bounds[1]], strict=True)]
        out[header] = values
    return pd.DataFrame(out)


def seed_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Multi-stage Pearson and finetuned test accuracy per seed, per scenario (× solver), with the minimum over seeds."""
    rows = reference_rows(summary[(summary.seed != "all") & (summary.method == "multi_stage")])
    seeds = sorted(rows.seed.unique(), key=lambda s: (len(s), s))
    table = []
    for (scenario, solver), g in rows.groupby(["scenario", "solver"], sort=False):
        by = g.drop_duplicates("seed").set_index("seed")
        line = {"scenario": scenario, "solver": solver}
        for col, label in (("pearson", "Pearson"), ("ft_test_accuracy", "ft acc.")):
            if col not in by:
                continue
            line |= {f"{label} seed {s}": _number(by[col].get(s, float("nan"))) for s in seeds}
            line[f"{label} min"] = _number(by[col].min())
        table.append(line)
    return pd.DataFrame(table)


def tracin_accuracy(run: Run) -> str:
    """The text experiment's TracIn classifier test accuracy per seed (``seed<s>/tracin/train.pt`` sidecars), or ""."""
    found = {}
    for sidecar in sorted((run.results / run.name).glob("seed*/tracin/train.pt.json")):
        accuracy = io.load_meta(str(sidecar.with_suffix(""))).get("test_accuracy")
        if accuracy is not None:
            found[sidecar.parent.parent.name.removeprefix("seed")] = accuracy
    if not found:
        return ""
    return ("TracIn classifier (the whole model finetuned by SGD, `tracin/train.pt`) test accuracy: "
            + ", ".join(f"seed {s} {_number(float(a))}" for s, a in found.items()) + ".")


def group_table(lko: pd.DataFrame) -> pd.DataFrame:
    """First order (``multi_stage``, reference solver) beside ``multi_stage_group`` per scenario and k, pooled over seeds.

    Per method: Pearson and slope (actual ≈ slope · predicted, :func:`msif.validation.metrics.correlations`) over the
    sets of that k, and the median of |actual / predicted − 1|; a last row per scenario over every k. Empty when the
    run has no group rows.
    """
    lko = lko[lko.method.isin(["multi_stage", "multi_stage_group"]) & (lko.solver == REFERENCE)]
    if not (lko.method == "multi_stage_group").any():
        return pd.DataFrame()
    table = []
    for scenario, g in lko.groupby("scenario", sort=False):
        for k in [*sorted(g.k.unique()), "all"]:
            band = g if k == "all" else g[g.k == k]
            line = {"scenario": scenario, "k": k, "sets": int((band.method == "multi_stage").sum())}
            for method, tag in (("multi_stage", "first order"), ("multi_stage_group", "group")):
                m = band[band.method == method]
                fit = correlations(m.predicted.to_numpy(), m.actual.to_numpy())
                ratio = (m.actual / m.predicted - 1).abs()
                line |= {f"{tag} Pearson": _number(fit["pearson"]), f"{tag} slope": _number(fit["slope"]),
                         f"{tag} median abs. rel. error": _number(float(ratio.median()))}
            table.append(line)
    return pd.DataFrame(table)


def group_cost(run: Run) -> pd.DataFrame:
    """``multi_stage_group``'s cost per set, per scenario and seed (:func:`msif.report.tables.group_cost`), from the sidecars
    of ``seed<s>/influence/<scenario>/group.pt``; empty when the run has none."""
    found = sorted((run.results / run.name).glob("seed*/influence/*/group.pt.json"))
    return tables.group_cost([(p.parent.name, p.parent.parent.parent.name.removeprefix("seed"), str(p)) for p in found])


def warnings(summary: pd.DataFrame, min_accuracy: float) -> list[str]:
    """A line per scenario whose finetuned test accuracy is below ``min_accuracy``: pooled (``seed == "all"``) or per seed."""
    if "ft_test_accuracy" not in summary:
        return []
    lines = []
    ms = summary[summary.method == "multi_stage"].drop_duplicates(["scenario", "seed"])
    for scenario, g in ms[ms.ft_test_accuracy < min_accuracy].groupby("scenario", sort=False):
        which = ", ".join("pooled over seeds" if s == "all" else f"seed {s}" for s in g.seed)
        values = ", ".join(_number(v) for v in g.ft_test_accuracy)
        lines.append(f"**Warning:** scenario `{scenario}` ({which}): finetuned test accuracy below "
                     f"`validation.min_accuracy` = {min_accuracy:g}: {values}; its faithfulness numbers explain a model that "
                     "has not learned its task.")
    return lines


def shown(path: Path, repo: Path) -> str:
    """``path`` relative to the checkout when it lies inside it, else as given."""
    try:
        return str(path.resolve().relative_to(repo.resolve()))
    except ValueError:
        return str(path)


def head_after(repo: Path, path: Path) -> bool:
    """Whether ``repo``'s HEAD was committed after ``path`` was written (so the run came from an earlier commit)."""
    try:
        stamp = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%ct"], capture_output=True, text=True, check=True)
        return int(stamp.stdout.strip()) > path.stat().st_mtime
    except (OSError, ValueError, subprocess.CalledProcessError):
        return False


def section(run: Run, min_accuracy: float, out: Path | None = None) -> str:
    """One run's section: its heading line, the pooled table, the per-seed table and warnings; or "Not yet run"."""
    head = f"## {run.name}\n\n"
    config = run.config + ("" if (run.repo / run.config).is_file() else " (not in that checkout)")
    if not run.summary.is_file():
        return head + (f"Not yet run: `{run.target}` (config `{run.config}`) writes `{shown(run.summary, run.repo)}`; then "
                       "`make docs`.\n")
    try:
        summary = pd.read_csv(run.summary, dtype={"seed": str})
    except (ValueError, pd.errors.ParserError) as err:
        return head + f"Unreadable `{run.summary}`: {type(err).__name__}: {err}\n"
    rows, was_pooled = pooled(summary)
    seeds = sorted((s for s in summary.seed.unique() if s != "all"), key=lambda s: (len(s), s))
    commit = git_stamp(run.repo, out)
    lines = [f"Config `{config}`; commit **{commit}**; `{shown(run.summary, run.repo)}` written {written(run.summary)}"
             + (" (the checkout's HEAD is newer than that file: the run came from an earlier commit)."
                if head_after(run.repo, run.summary) else ".")]
    lines.append(("Pooled over seeds " + ", ".join(seeds) if was_pooled else "One seed, not pooled")
                 + (f"; {int(rows.n_sets.max())} removal sets" if "n_sets" in rows else "")
                 + f"; multi-stage rows of the reference solver `{REFERENCE}` where the run has it.")
    lines.append(markdown_table(pooled_table(reference_rows(rows))))
    lines += warnings(rows, min_accuracy)
    per_seed = seed_table(summary) if was_pooled else pd.DataFrame()
    if not per_seed.empty:
        lines.append("Multi-stage influence per seed (Pearson over that seed's removal sets; finetuned test accuracy):")
        lines.append(markdown_table(per_seed))
        if "pearson" in summary:
            ms = reference_rows(summary[(summary.seed != "all") & (summary.method == "multi_stage")])
            low = ms.loc[ms.pearson.idxmin()] if ms.pearson.notna().any() else None
            if low is not None:
                lines.append(f"Lowest per-seed Pearson: {_number(low.pearson)} (scenario `{low.scenario}`, seed {low.seed}).")
        lines += warnings(summary[summary.seed != "all"], min_accuracy)
    if tracin := tracin_accuracy(run):
        lines.append(tracin)
    if run.leave_k_out.is_file():
        by_k = group_table(pd.read_csv(run.leave_k_out))
        if not by_k.empty:
            lines.append("Group removals by set size (`validation/leave_k_out.csv`): first order against `multi_stage_group` "
                         "on the same removal sets, which first order chose ([method](method.md#group-removals-beyond-first-order-multi_stage_group)):")
            lines.append(markdown_table(by_k))
    cost = group_cost(run)
    if not cost.empty:
        lines.append("Cost of `multi_stage_group` per removal set against a first-order score's test column, both measured "
                     "in the same job on the same factorisations (sidecars of `influence/<scenario>/group.pt`; both stages):")
        lines.append(markdown_table(cost))
    return head + "\n\n".join(lines) + "\n"


def render(runs: list[Run], repo: Path, min_accuracy: float = MIN_ACCURACY, out: Path | None = None) -> str:
    """The whole page: an intro stamped with ``repo``'s commit, then one :func:`section` per run."""
    intro = (f"{TITLE}\n\n"
             f"Generated by **{GENERATOR}** (`make docs`, runs set by `RESULTS_RUNS`) in a checkout at commit "
             f"**{git_stamp(repo, out)}**, from each run's `validation/summary.csv`. Do not edit by hand: rerun the workflow, "
             "then `make docs`. Each run's section names the commit of the checkout it ran in (\"dirty\": tracked files "
             "differed from it) and the date its summary was written. What each column answers: "
             "[validation.md](validation.md#what-each-number-answers).\n")
    return "\n".join([intro, *(section(r, min_accuracy, out) for r in runs)])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=GENERATOR, description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", default=[], metavar="NAME=RESULTS_DIR[@REPO_DIR]",
                   help="a run to report (repeatable): results/NAME/ under RESULTS_DIR, made in the checkout REPO_DIR "
                        "(default: --repo); e.g. default=results")
    p.add_argument("--out", default="docs/results.md", help="page to write (default: docs/results.md)")
    p.add_argument("--repo", default=".", help="git checkout whose commit stamps the page (default: .)")
    p.add_argument("--min-accuracy", type=float, default=MIN_ACCURACY,
                   help=f"flag finetuned test accuracy below this (validation.min_accuracy; default {MIN_ACCURACY})")
    args = p.parse_args(argv)
    repo, out = Path(args.repo), Path(args.out)
    runs = [parse_run(s, repo) for s in args.run or ["default=results"]]
    io.write_text(out, render(runs, repo, args.min_accuracy, out))
    found = sum(r.summary.is_file() for r in runs)
    print(f"wrote {out}: {found} of {len(runs)} runs found ({', '.join(r.name for r in runs)})")


if __name__ == "__main__":
    main()

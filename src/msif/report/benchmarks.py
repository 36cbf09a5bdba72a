"""docs/benchmarks.md, generated from the benchmark tables under results/bench/: ``python -m msif.report.benchmarks`` (``make docs``).

Every number on that page is read from a file a benchmark wrote; none is typed by hand. Each table is
headed by the file it comes from, the date the file was written (its modification time, UTC), the
settings its JSON sidecar records, and the command that writes it. A file that does not exist is listed
as "not yet measured" with that command. The page is stamped with the git commit of the working tree
it was generated in (short hash; "dirty" when tracked files differ from that commit).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from msif import io

TITLE = "# Benchmarks"
GENERATOR = "python -m msif.report.benchmarks"


@dataclass(frozen=True)
class Source:
    """One benchmark file under the results folder and what writes it."""

    path: str  # relative to the results folder
    title: str
    target: str | None  # the make target that writes it; None: no target writes it yet
    about: str  # what the table answers
    meta: tuple[str, ...] = ()  # JSON sidecars with machine and settings (the first that exists), relative to the results folder
    fallback: str | None = None  # a CSV rendered when ``path`` (a markdown file) is missing or empty
    figure: str | None = None  # a PNG the benchmark draws, relative to the results folder: copied beside the page, shown


FIGURES = "figures"  # the folder beside the page that the sources' figures are copied into (committed with the page)


def figure_file(source: Source) -> str:
    """The name of ``source``'s figure in :data:`FIGURES` (its path under the results folder, ``/`` as ``-``)."""
    return source.figure.replace("/", "-")


SOURCES = (
    Source("solvers.csv", "Solvers against the exact scores (default model)", "bench",
           "Each solver × stage × scenario against the exact (dense) scores: Pearson, Spearman and top-10 overlap per test "
           "example (mean; `pearson_min` the worst), wall time including any fit, extra peak memory, curvature products, the "
           "largest relative residual against the true curvature, `converged`. Rows with `curvature = ggn` solve the "
           "Gauss–Newton matrix and are compared with the exact Hessian scores.", ("solvers.json",)),
    Source("cost.csv", "Cost of scoring (default model)", "bench",
           "Scoring 1, 10 and 100 test examples end to end (finetune_ihvp, cross_stage_vector, pretrain_ihvp, scores), by step, "
           "in seconds and in pretraining epochs (one forward + backward pass of the mean loss over the pretraining set): "
           "`cold` with the one-off fits, `warm` reusing them, `warm_unchecked` also without the residual checks.",
           ("cost.json", "solvers.json")),
    Source("scale_solvers.csv", "Solvers on a model too big for a dense Hessian (config/scale.yaml)", "bench-scale",
           "As `solvers.csv`, against a tightly converged block CG (no dense Hessian fits); `cg@k` / `pcg@k` stop after k "
           "iterations.", ("scale_solvers.json",)),
    Source("scale_cost.csv", "Cost of scoring at scale (config/scale.yaml)", "bench-scale",
           "As `cost.csv` on the CNN; `scores_jvp_s`: the dot products as one JVP per test column; "
           "`scores_rank<r>_*`: the low-rank query of rank r (`influence.query_rank`), its time and its agreement with the "
           "exact dot products.", ("scale_cost.json",)),
    Source("peers.md", "msif beside captum, dattri, pyDVL, kronfluence and TRAK (default model)", "bench-peers",
           "Every library's scores aligned to msif's convention (removal effect, 1/n, (n_test, n_train), damping in msif's "
           "unit) and compared with msif's exact scores; the validation problems score each library's single-stage scores "
           "against the leave-k-out and LDS retraining of the default run.", ("peers.json",), fallback="peers.csv"),
    Source("peers-cnn/peers.md", "msif beside the peers on the scale config's CNN", "bench-peers-cnn",
           "The single-stage problem on config/scale.yaml's CNN, against msif's CG to relative residual 1e-6 (float64).",
           ("peers-cnn/peers.json",), fallback="peers-cnn/peers.csv"),
    Source("run_time.csv", "Where a workflow run's time goes", "bench-run",
           "The workflow run as `make run` runs it (the default config, then the tiny one), one row per config and rule — "
           "jobs, wall time, CPU time, start-up time — plus per-config summary rows `(jobs)` and `(run)`; every row carries the "
           "machine's load average before, during and after its run.", ("run_time.json",)),
    Source("lds_protocol.md", "dattri's MNIST LDS protocol: msif beside dattri on the same ground truth", "bench-lds",
           "dattri's MNIST+LR / MNIST+MLP benchmark (Deng et al. 2024) on MNIST-5k, which ships offline: the LDS (dattri's "
           "definition, 95 % bootstrap interval over test examples) of msif's exact / CG / EK-FAC influence and grad-dot and of "
           "dattri's IF-explicit / IF-CG / IF-EKFAC / TracIn / TRAK, all scored against one retrained ground truth (half-size "
           "subsets, fresh initialisations averaged over seeds), with each attributor's time in the same run; then dattri's "
           "published values for its original setting, with their source, and how the two protocols differ "
           "([validation.md](validation.md#dattris-mnist-lds-protocol-make-bench-lds)).",
           ("lds_protocol.json",), fallback="lds_protocol.csv"),
    Source("tradeoff.csv", "What faithfulness costs: accuracy against Pearson and LDS over regularisation and damping",
           "bench-tradeoff",
           "Each grid point of `config/bench/tradeoff.yaml` (a partial config merged onto the default one: pretraining L2, "
           "pretraining objective, finetuning L2, damping) trained, scored with the exact multi-stage influence and validated by retraining "
           "both stages: per scenario, the pretrained and finetuned test accuracy, the leave-k-out Pearson and slope over all "
           "removal sets, the warm-start LDS; `default` marks the shipped default config; `seconds` / `cpu_seconds` per point "
           "and seed, both scenarios together; `shared_from`: a point equal but for damping whose trained models and LDS "
           "retrains this one reuses (damping enters the scores only). The figure: Pearson and LDS against finetuned "
           "accuracy, the default circled red.",
           ("tradeoff.json",), figure="tradeoff.png"),
)


def git_stamp(repo: Path, exclude: Path | None = None) -> str:
    """``<short hash>``, with `` (dirty)`` when tracked files differ from it; ``unknown`` outside a git checkout.

    ``exclude``: a file whose own changes do not count (the generated page itself).
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        spec = ["--", "."]
        if exclude is not None:
            try:
                spec.append(f":(exclude){exclude.resolve().relative_to(Path(git('rev-parse', '--show-toplevel')).resolve())}")
            except ValueError:  # the page lies outside the checkout
                pass
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", *spec))
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} (dirty)" if dirty else head


def written(path: Path) -> str:
    """The date ``path`` was written: its modification time, UTC."""
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def cell(value) -> str:
    """One table cell: floats to 6 significant digits (a Pearson of 0.99999 is not 1), NaN empty, pipes escaped."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def settings(path: Path) -> str | None:
    """The scalar entries (and short lists) of a benchmark's JSON sidecar, as one line; None if absent or unreadable."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    parts = []
    for key, value in meta.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif isinstance(value, str | int | bool) or value is None:
            parts.append(f"{key} {value}")
        elif isinstance(value, list) and len(value) <= 4 and all(isinstance(v, int | float) for v in value):
            parts.append(f"{key} " + "/".join(f"{v:.3g}" for v in value))
    return "; ".join(parts).replace("|", "\\|") or None


def section(source: Source, results: Path) -> str:
    """One source's section: its table (or embedded markdown), or the "not yet measured" line."""
    head = f"## {source.title}\n\n{source.about}\n\n"
    path = results / source.path
    if source.path.endswith(".md") and (not path.is_file() or not path.read_text().strip()) and source.fallback:
        path = results / source.fallback
    if not path.is_file():
        if source.target:
            return head + f"Not yet measured: run `make {source.target}` (it writes `{results / source.path}`).\n"
        return head + f"Not yet measured: no make target writes `{results / source.path}` yet.\n"
    lines = [f"From `{path}`, written {written(path)}" + (f" by `make {source.target}`." if source.target else ".")]
    sidecar = next((m for m in source.meta if (results / m).is_file()), None)
    meta = settings(results / sidecar) if sidecar else None
    if meta:
        lines.append(f"Settings ({sidecar}): {meta}.")
    if source.figure and (results / source.figure).is_file():
        lines.append(f"![{source.title}]({FIGURES}/{figure_file(source)})")
    if path.suffix == ".md":
        body = path.read_text().strip()
    else:
        try:
            body = markdown_table(pd.read_csv(path))
        except (ValueError, pd.errors.ParserError) as err:
            body = f"Unreadable: {type(err).__name__}: {err}"
    return head + "\n\n".join([*lines, body]) + "\n"


def render(results: Path, repo: Path, out: Path | None = None) -> str:
    """The whole page for the benchmark files under ``results``, stamped with ``repo``'s commit."""
    intro = (f"{TITLE}\n\n"
             f"Generated by `{GENERATOR}` (`make docs`) from the files under `{results}/` in a checkout at commit "
             f"**{git_stamp(repo, out)}** (\"dirty\": tracked files differed from that commit). Do not edit by hand: rerun the "
             "benchmark, then `make docs`. Each table gives the "
             "date its file was written; times are wall-clock on the machine that wrote it (its sidecar's settings), so "
             "compare rows of one table, not tables. What the benchmarks measure and how to read them: "
             "[solvers.md](solvers.md) and [validation.md](validation.md).\n")
    return "\n".join([intro, *(section(s, results) for s in SOURCES)])


README_MARKS = ("<!-- run-time: written by make docs from results/bench/run_time.csv -->", "<!-- /run-time -->")


def run_time_quote(results: Path) -> str | None:
    """The README's line on how long ``make run`` takes: the default config's ``(run)`` row of ``run_time.csv`` with
    its date, commit and load (``run_time.json``); None when there is no such row."""
    try:
        table = pd.read_csv(results / "run_time.csv")
        meta = json.loads((results / "run_time.json").read_text())
    except (OSError, ValueError):
        return None
    rows = table[(table["rule"] == "(run)") & (table["config"] != "tiny")]
    run = next((r for r in meta.get("runs", []) if not str(r.get("config", "")).startswith(".test")), {})
    if rows.empty:
        return None
    row = rows.iloc[0]
    date = str(run.get("finished", ""))[:10] or written(results / "run_time.csv")[:10]
    commit = str(meta.get("commit", "unknown")).split(" ")[0]
    return (f"Measured by `make bench-run` on {date} at commit {commit}: the default workflow took {row.wall_s:.0f} s on "
            f"{int(row.cores)} CPU cores ({int(row.jobs)} jobs, {row.cpu_s:.0f} CPU-seconds of jobs, load average "
            f"{row.load_mean:.1f} during the run); setup on a fresh machine adds about a minute. Per rule: "
            "[docs/benchmarks.md](docs/benchmarks.md#where-a-workflow-runs-time-goes).")


def update_readme(readme: Path, results: Path) -> bool:
    """Replace the text between :data:`README_MARKS` in ``readme`` by :func:`run_time_quote`; False if unchanged."""
    text, quote = readme.read_text(), run_time_quote(results)
    start, end = README_MARKS
    if quote is None or start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    new = f"{head}{start}\n{quote}\n{end}{rest.split(end, 1)[1]}"
    if new != text:
        io.write_text(readme, new)
    return new != text


def copy_figures(results: Path, out: Path) -> list[Path]:
    """Each source's figure that exists under ``results``, copied into :data:`FIGURES` beside the page ``out``."""
    copied = []
    for source in SOURCES:
        if source.figure and (results / source.figure).is_file():
            target = out.parent / FIGURES / figure_file(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(results / source.figure, target)
            copied.append(target)
    return copied


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=GENERATOR, description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results/bench", help="folder of the benchmark files (default: results/bench)")
    p.add_argument("--out", default="docs/benchmarks.md", help="page to write (default: docs/benchmarks.md)")
    p.add_argument("--repo", default=".", help="git checkout whose commit stamps the page (default: .)")
    p.add_argument("--readme", default=None, help="also rewrite this README's run-time line (between its run-time marks)")
    args = p.parse_args(argv)
    out = Path(args.out)
    text = render(Path(args.results), Path(args.repo), out)
    io.write_text(out, text)
    for figure in copy_figures(Path(args.results), out):
        print(f"copied {figure}")
    if args.readme and update_readme(Path(args.readme), Path(args.results)):
        print(f"updated the run-time line of {args.readme}")
    missing = sum(line.startswith("Not yet measured") for line in text.splitlines())
    print(f"wrote {out}: {len(SOURCES) - missing} of {len(SOURCES)} benchmark files found under {args.results}")


if __name__ == "__main__":
    main()

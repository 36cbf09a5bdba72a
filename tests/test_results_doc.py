"""docs/results.md is generated from workflow runs' validation/summary.csv (python -m msif.report.results)."""

import json
import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from msif.report import results

ROOT = Path(__file__).resolve().parents[1]

NEW = ("pearson_same_basin", "n_other_basin", "lds_cold", "lds_cold_lo", "lds_cold_hi", "pearson_lo_iid_sets", "pearson_hi_iid_sets")


def row(scenario, method, solver, seed, pearson, ft, **extra):
    base = {"scenario": scenario, "method": method, "solver": solver, "seed": seed, "pearson": pearson,
            "pearson_lo": pearson - 0.05, "pearson_hi": pearson + 0.01, "pearson_lo_iid_sets": pearson - 0.02,
            "pearson_hi_iid_sets": pearson + 0.005, "spearman": 0.5, "slope": 1.25, "lds_warm": 0.7, "lds_warm_lo": 0.6,
            "lds_warm_hi": 0.8, "lds_cold": float("nan"), "lds_cold_lo": float("nan"), "lds_cold_hi": float("nan"),
            "n_sets": 24 if seed == "all" else 12, "pt_test_accuracy": 0.95, "ft_test_accuracy": ft,
            "pearson_same_basin": pearson + 0.001, "n_other_basin": 2.0}
    return base | extra


def summary_rows():
    rows = []
    for seed, p_fixed, p_upd, ft_fixed in (("0", 0.91, 0.85, 0.52), ("1", 0.93, 0.71, 0.48), ("all", 0.92, 0.78, 0.5)):
        rows += [row("fixed", "multi_stage", "exact", seed, p_fixed, ft_fixed),
                 row("fixed", "multi_stage", "cg", seed, p_fixed - 0.3, ft_fixed),
                 row("fixed", "single_stage", "exact", seed, 0.4, ft_fixed),
                 row("updated", "multi_stage", "exact", seed, p_upd, 0.9),
                 row("updated", "multi_stage", "cg", seed, p_upd - 0.3, 0.9),
                 row("updated", "grad_dot", "none", seed, 0.1, 0.9)]
    return rows


def write_run(results_dir: Path, name: str, rows: list[dict], drop=()) -> Path:
    path = results_dir / name / "validation" / "summary.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame(rows).drop(columns=list(drop)).to_csv(path, index=False)
    return path


@pytest.fixture
def repo(tmp_path):
    """A git checkout with one commit (its short hash is the stamp expected)."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "config").mkdir()
    (repo / "config" / "config.yaml").write_text("run: default\n")
    subprocess.run([*git, "add", "config"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    return repo


def head(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def table_rows(page: str, first: str) -> list[list[str]]:
    """The cells of the markdown table rows of ``page`` starting with ``| first |``."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in page.splitlines()
            if line.startswith(f"| {first} |")]


def header(page: str) -> list[str]:
    return table_rows(page, "scenario")[0]


def generate(tmp_path, runs, argv=()) -> str:
    out = tmp_path / "docs" / "results.md"
    results.main(["--out", str(out), *(a for r in runs for a in ("--run", r)), *argv])
    return out.read_text()


def test_pooled_table_numbers_commit_and_warning(tmp_path, repo):
    summary = write_run(repo / "results", "default", summary_rows())
    os.utime(summary, (2e9, 2e9))  # written after the commit
    page = generate(tmp_path, [f"default={repo}/results@{repo}"], ["--repo", str(repo)])
    assert page.startswith(results.TITLE)
    section = page.split("## default", 1)[1]
    assert f"commit **{head(repo)}**" in section and "(dirty)" not in section
    assert "Config `config/config.yaml`;" in section and "written 2033-05-18 03:33 UTC." in section
    assert "HEAD is newer" not in section
    assert "Pooled over seeds 0, 1; 24 removal sets" in section
    pooled = section.split("Multi-stage influence per seed")[0]
    cols = header(pooled)
    fixed = [dict(zip(cols, r, strict=True)) for r in table_rows(pooled, "fixed")]
    # pooled only, the reference solver's multi-stage row, multi-stage first: no cg row, no per-seed row
    assert [(r["method"], r["solver"]) for r in fixed] == [("multi_stage", "exact"), ("single_stage", "exact")]
    ms = fixed[0]
    assert ms["`pearson`"] == "0.92" and ms["95 % CI, clustered"] == "[0.87, 0.93]"
    assert ms["95 % CI, iid sets (old)"] == "[0.9, 0.925]"
    assert ms["`ft_test_accuracy`"] == "0.5" and ms["`pt_test_accuracy`"] == "0.95"
    assert ms["`spearman`"] == "0.5" and ms["`slope`"] == "1.25" and ms["`lds_warm` [95 % CI]"] == "0.7 [0.6, 0.8]"
    assert ms["`lds_cold` [95 % CI]"] == ""  # NaN: an empty cell
    assert ms["`pearson_same_basin`"] == "0.921" and ms["`n_other_basin`"] == "2"
    updated = [dict(zip(cols, r, strict=True)) for r in table_rows(pooled, "updated")]
    assert [(r["method"], r["`pearson`"]) for r in updated] == [("multi_stage", "0.78"), ("grad_dot", "0.1")]
    # the accuracy warning: fixed below 0.8 (pooled and both seeds), updated not
    warnings = [line for line in section.splitlines() if line.startswith("**Warning:**")]
    assert len(warnings) == 2 and all("`fixed`" in w for w in warnings)
    assert "(pooled over seeds): finetuned test accuracy below `validation.min_accuracy` = 0.8: 0.5;" in warnings[0]
    assert "(seed 0, seed 1)" in warnings[1] and ": 0.52, 0.48;" in warnings[1]
    assert generate(tmp_path, [f"default={repo}/results@{repo}"], ["--min-accuracy", "0.4"]).count("**Warning:**") == 0


def test_per_seed_table_states_the_minimum(tmp_path, repo):
    write_run(repo / "results", "default", summary_rows())
    page = generate(tmp_path, [f"default={repo}/results@{repo}"])
    per_seed = page.split("Multi-stage influence per seed", 1)[1]
    cols = header(per_seed)
    assert cols == ["scenario", "solver", "Pearson seed 0", "Pearson seed 1", "Pearson min", "ft acc. seed 0", "ft acc. seed 1",
                    "ft acc. min"]
    rows = {r[0]: dict(zip(cols, r, strict=True)) for r in table_rows(per_seed, "fixed") + table_rows(per_seed, "updated")}
    assert rows["fixed"] == {"scenario": "fixed", "solver": "exact", "Pearson seed 0": "0.91", "Pearson seed 1": "0.93",
                             "Pearson min": "0.91", "ft acc. seed 0": "0.52", "ft acc. seed 1": "0.48", "ft acc. min": "0.48"}
    assert rows["updated"]["Pearson min"] == "0.71" and rows["updated"]["ft acc. min"] == "0.9"
    assert "Lowest per-seed Pearson: 0.71 (scenario `updated`, seed 1)." in per_seed


def test_an_older_summary_without_the_newer_columns(tmp_path, repo):
    write_run(repo / "results", "default", summary_rows(), drop=NEW)
    page = generate(tmp_path, [f"default={repo}/results@{repo}"])
    page = page.split("Multi-stage influence per seed")[0]
    cols = header(page)
    assert cols == ["scenario", "method", "solver", "`pt_test_accuracy`", "`ft_test_accuracy`", "`pearson`", "95 % CI, clustered",
                    "`spearman`", "`slope`", "`lds_warm` [95 % CI]"]
    ms = dict(zip(cols, table_rows(page, "fixed")[0], strict=True))
    assert ms["`pearson`"] == "0.92" and ms["95 % CI, clustered"] == "[0.87, 0.93]"


def test_a_run_without_the_reference_solver_keeps_all_its_solvers(tmp_path, repo):
    rows = [r for r in summary_rows() if r["solver"] != "exact"]
    write_run(repo / "results", "default", rows)
    page = generate(tmp_path, [f"default={repo}/results@{repo}"])
    fixed = table_rows(page.split("Multi-stage influence per seed")[0], "fixed")
    assert [(r[1], r[2]) for r in fixed] == [("multi_stage", "cg")]


def test_a_missing_run_is_not_yet_run(tmp_path, repo):
    write_run(repo / "results", "default", summary_rows())
    page = generate(tmp_path, [f"default={repo}/results@{repo}", f"paper-mnist={repo}/results@{repo}", f"other=nowhere@{repo}"])
    assert "## default" in page and "| fixed | multi_stage | exact |" in page
    mnist = page.split("## paper-mnist", 1)[1].split("## other")[0]
    assert mnist.strip() == ("Not yet run: `make paper` (config `config/paper-mnist.yaml`) writes "
                             "`results/paper-mnist/validation/summary.csv`; then `make docs`.")
    empty = generate(tmp_path, ["default=nowhere"])
    assert "Not yet run: `make run` (config `config/config.yaml`)" in empty and "| scenario |" not in empty


def test_a_summary_older_than_head_is_flagged(tmp_path, repo):
    summary = write_run(repo / "results", "default", summary_rows())
    os.utime(summary, (1e9, 1e9))  # 2001: written before the checkout's commit
    page = generate(tmp_path, [f"default={repo}/results@{repo}"])
    assert "written 2001-09-09 01:46 UTC (the checkout's HEAD is newer than that file" in page


def test_a_bad_run_spec_is_refused():
    with pytest.raises(ValueError, match="NAME=RESULTS_DIR"):
        results.parse_run("default")
    assert results.parse_run("a=r@c") == results.Run("a", Path("r"), Path("c"))
    assert results.parse_run("a=r", Path("here")).repo == Path("here")


def test_makefile_docs_target_writes_results_page():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^RESULTS_RUNS \?= default=results$", makefile, flags=re.M)
    assert re.search(r"^docs: .*\n(\t.*\n)*\t\$\(PY\) -m msif\.report\.results --out docs/results.md "
                     r"\$\(foreach run,\$\(RESULTS_RUNS\),--run \$\(run\)\)$", makefile, flags=re.M)


def test_the_committed_results_page_is_generated():
    page = ROOT / "docs" / "results.md"
    if not page.exists():
        pytest.skip("docs/results.md not generated yet")
    assert page.read_text().startswith(results.TITLE + "\n\nGenerated by **python -m msif.report.results**")


def test_group_rows_get_a_table_by_set_size_beside_first_order(tmp_path, repo):
    """Per scenario and k: Pearson, slope and median |actual / predicted − 1| of first order and the group method."""
    write_run(tmp_path / "results", "default", summary_rows())
    lko = []
    for k in (5, 40):
        for t, p in enumerate((1.0, 2.0, 3.0, 4.0)):
            pred = p * k / 5
            lko += [{"scenario": "fixed", "solver": "exact", "method": "multi_stage", "k": k, "test_id": t, "predicted": pred,
                     "actual": 1.5 * pred}, {"scenario": "fixed", "solver": "exact", "method": "multi_stage_group", "k": k,
                                             "test_id": t, "predicted": 1.5 * pred, "actual": 1.5 * pred},
                    {"scenario": "fixed", "solver": "cg", "method": "multi_stage", "k": k, "test_id": t, "predicted": -pred,
                     "actual": 1.5 * pred}]
    path = tmp_path / "results" / "default" / "validation" / "leave_k_out.csv"
    pd.DataFrame(lko).to_csv(path, index=False)
    page = generate(tmp_path, [f"default={tmp_path / 'results'}@{repo}"])
    rows = {(r[0], r[1]): r[2:] for r in table_rows(page, "fixed") if len(r) == 9}
    assert list(rows) == [("fixed", "5"), ("fixed", "40"), ("fixed", "all")]
    # sets, first Pearson / slope / rel. error, group Pearson / slope / rel. error (the cg rows are left out)
    assert rows[("fixed", "5")] == ["4", "1", "1.5", "0.5", "1", "1", "0"]
    assert rows[("fixed", "all")][0] == "8"
    pd.DataFrame([r for r in lko if r["method"] == "multi_stage"]).to_csv(path, index=False)
    assert "Group removals by set size" not in generate(tmp_path, [f"default={tmp_path / 'results'}@{repo}"])
    assert "Cost of `multi_stage_group`" not in page


def test_group_cost_per_set_is_tabulated_from_the_sidecars(tmp_path, repo):
    """Per scenario and seed: ms per set, ms per first-order test column, their ratio, Newton steps, failed searches."""
    write_run(tmp_path / "results", "default", summary_rows())
    for seed, ratio in (("0", 6.5), ("1", 7.25)):
        sidecar = tmp_path / "results" / "default" / f"seed{seed}" / "influence" / "fixed" / "group.pt.json"
        sidecar.parent.mkdir(parents=True)
        sidecar.write_text(json.dumps({"cost": {"seconds_per_set": 0.013, "first_order_seconds_per_test": 0.002, "ratio": ratio,
                                                "newton_steps_per_set": 5.5}, "line_search_failed": {"sets": 0, "lds_subsets": 2}}))
    page = generate(tmp_path, [f"default={tmp_path / 'results'}@{repo}"])
    rows = [r for r in table_rows(page, "fixed") if len(r) == 7]
    assert rows == [["fixed", "0", "13", "2", "6.5", "5.5", "0, 2"], ["fixed", "1", "13", "2", "7.25", "5.5", "0, 2"]], rows


def test_a_text_run_states_its_tracin_classifier_accuracy(tmp_path, repo):
    write_run(tmp_path / "results", "text", summary_rows())
    for seed, acc in (("0", 0.8975), ("1", 0.91)):
        sidecar = tmp_path / "results" / "text" / f"seed{seed}" / "tracin" / "train.pt.json"
        sidecar.parent.mkdir(parents=True)
        sidecar.write_text(json.dumps({"test_accuracy": acc}))
    page = generate(tmp_path, [f"text={tmp_path / 'results'}@{repo}"])
    assert "TracIn classifier (the whole model finetuned by SGD, `tracin/train.pt`) test accuracy: seed 0 0.8975, seed 1 0.91." in page
    write_run(tmp_path / "other", "default", summary_rows())
    assert "TracIn classifier" not in generate(tmp_path, [f"default={tmp_path / 'other'}@{repo}"])

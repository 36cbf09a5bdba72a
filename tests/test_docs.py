"""The documentation stays a front door plus docs/, true to the code: short README, links that resolve, names that exist,
and docs/benchmarks.md generated from result files, never typed."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from msif.arguments import SOLVERS
from msif.report import benchmarks

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 200
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target); images excluded
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
MSIF_NAME = re.compile(r"(?<![\w/.-])msif(?:\.[A-Za-z_]\w*)+")


def prose(path: Path) -> str:
    """The page without its fenced code blocks (their brackets are code, not links)."""
    return FENCE.sub("", path.read_text())


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; at most {MAX_README_LINES} (move the rest to docs/)"
    text = README.read_text()
    assert text.count("```python") == 1, "README.md must hold exactly one ```python block (tests/test_api.py runs it)"
    for command in ("make run    # set up (.venv, pinned CPU torch first) and run the default workflow end to end",
                    "make test   # set up and run the test suite"):
        assert command in text, f"README.md lost the command line {command!r}"


def test_the_docs_exist():
    names = {p.name for p in DOCS}
    assert {"method.md", "solvers.md", "workflow.md", "validation.md", "experiments.md", "benchmarks.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    """Every relative link points at an existing file (anchors are not checked)."""
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # http:, https:, mailto:, in-page anchors
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files {broken}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_anchors_into_markdown_pages_exist(page: Path):
    """A link ``page.md#anchor`` names a heading of that page."""
    broken = []
    for target in LINK.findall(prose(page)):
        path, _, anchor = target.partition("#")
        if not anchor or re.match(r"^[a-z][a-z0-9+.-]*:", target) or not (path == "" or path.endswith(".md")):
            continue
        linked = (page.parent / path) if path else page
        if linked.exists() and anchor not in {slug(h) for h in re.findall(r"^#+ (.*)$", prose(linked), flags=re.M)}:
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: anchors that name no heading {broken}"


def unresolved(name: str) -> str | None:
    """Why ``msif.a.b.c`` does not resolve (the longest module prefix that exists, then attributes); None if it does."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        except Exception:  # a parent module fails to import: reported at the shorter prefix
            found = False
        if not found:
            continue
        try:
            obj = importlib.import_module(module)
        except Exception as err:  # the module exists but does not import: say why
            return f"{name} (import {module}: {type(err).__name__}: {err})"
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return f"{name} (no {attr!r} in {module})"
            obj = getattr(obj, attr)
        return None
    return f"{name} (no such module)"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_modules_and_functions_exist(page: Path):
    """Every ``msif.x.y`` a page names in code exists: docs that drift from the code fail here."""
    names = {m for span in CODE_SPAN.findall(page.read_text()) for m in MSIF_NAME.findall(span)}
    missing = sorted(filter(None, map(unresolved, names)))
    assert not missing, f"{page.relative_to(ROOT)} names what does not exist: {missing}"


def test_every_solver_and_rule_is_documented():
    solvers = (ROOT / "docs/solvers.md").read_text()
    assert [s for s in SOLVERS if f"`{s}`" not in solvers] == []
    rules = {m for smk in (ROOT / "workflow/rules").glob("*.smk") for m in re.findall(r"^rule (\w+):", smk.read_text(), flags=re.M)}
    workflow = (ROOT / "docs/workflow.md").read_text()
    assert rules and sorted(r for r in rules if f"`{r}`" not in workflow) == []


# --- docs/benchmarks.md is generated -----------------------------------------------------------------

def head_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def generate(results: Path, out: Path) -> str:
    benchmarks.main(["--results", str(results), "--out", str(out), "--repo", str(ROOT)])
    return out.read_text()


def test_benchmarks_page_renders_a_measured_table(tmp_path):
    results = tmp_path / "bench"
    results.mkdir()
    (results / "solvers.csv").write_text("scenario,stage,solver,curvature,pearson,residual,converged\n"
                                         "fixed,pretrain,cg,hessian,0.99999912,3.2e-11,True\n"
                                         "updated,both,lissa,hessian,0.98769,0.4,False\n")
    (results / "solvers.json").write_text('{"config": "config/config.yaml", "threads": 1, "torch": "2.13.0"}')
    page = generate(results, tmp_path / "benchmarks.md")
    assert page.startswith(benchmarks.TITLE)
    assert f"at commit **{head_commit()}" in page
    assert "| scenario | stage | solver | curvature | pearson | residual | converged |" in page
    assert "| fixed | pretrain | cg | hessian | 0.999999 | 3.2e-11 | True |" in page
    assert "| updated | both | lissa | hessian | 0.98769 | 0.4 | False |" in page
    assert f"From `{results / 'solvers.csv'}`, written " in page and "by `make bench`" in page
    assert "Settings (solvers.json): config config/config.yaml; threads 1; torch 2.13.0." in page
    assert "Not yet measured: run `make bench-scale`" in page  # the files that are not there


def test_benchmarks_page_without_results_says_not_yet_measured(tmp_path):
    page = generate(tmp_path / "empty", tmp_path / "benchmarks.md")
    assert f"at commit **{head_commit()}" in page
    for source in benchmarks.SOURCES:
        assert f"## {source.title}" in page
        if source.target:
            assert f"Not yet measured: run `make {source.target}` (it writes `{tmp_path / 'empty' / source.path}`)." in page
    assert page.count("Not yet measured") == len(benchmarks.SOURCES)
    assert "|---|" not in page


def test_benchmarks_page_embeds_the_peers_markdown(tmp_path):
    results = tmp_path / "bench"
    (results / "peers-cnn").mkdir(parents=True)
    (results / "peers.md").write_text("| method | library |\n|---|---|\n| cg | msif |\n")
    (results / "peers-cnn/peers.md").write_text("")  # a failed `--markdown` redirect: fall back to the CSV
    (results / "peers-cnn/peers.csv").write_text("method,library,notes\nekfac,pydvl,failed: a|b\n")
    page = generate(results, tmp_path / "benchmarks.md")
    assert "| cg | msif |" in page
    assert "| ekfac | pydvl | failed: a\\|b |" in page


def test_the_committed_benchmarks_page_is_generated():
    page = (ROOT / "docs/benchmarks.md").read_text()
    assert page.startswith(benchmarks.TITLE + "\n\nGenerated by `python -m msif.report.benchmarks`")
    assert all(f"## {s.title}" in page for s in benchmarks.SOURCES)


def test_makefile_has_the_docs_target():
    assert re.search(r"^docs: .*\n\t\$\(PY\) -m msif\.report\.benchmarks ", (ROOT / "Makefile").read_text(), flags=re.M)


def test_readme_run_time_line_is_written_from_run_time_csv(tmp_path):
    results = tmp_path / "bench"
    results.mkdir()
    (results / "run_time.csv").write_text(
        "config,rule,jobs,wall_s,wall_source,cpu_time_s,cpu_s,startup_s,startup_mean_s,dynamo_jobs,utilisation,cores,load_before,"
        "load_mean,load_after\n"
        "default,(run),109,512.4,run,600,700.2,300,,,0.7,2,0.1,2.02,0.3\n"
        "tiny,(run),41,55.0,run,60,70,30,,,0.6,2,0.1,1.5,0.3\n")
    (results / "run_time.json").write_text(json.dumps({"commit": "abc1234 (default), abc1234 (tiny)", "runs": [
        {"config": "config/config.yaml", "finished": "2026-12-01T16:00:00+00:00"},
        {"config": ".test/config/config.yaml", "finished": "2026-12-01T16:05:00+00:00"}]}))
    readme = tmp_path / "README.md"
    start, end = benchmarks.README_MARKS
    readme.write_text(f"# x\n\n{start}\nold line\n{end}\n\nafter\n")
    assert benchmarks.update_readme(readme, results)
    text = readme.read_text()
    assert "old line" not in text and text.endswith(f"{end}\n\nafter\n")
    assert "on 2026-12-01 at commit abc1234: the default workflow took 512 s on 2 CPU cores (109 jobs, 700 CPU-seconds" in text
    assert "load average 2.0 during the run" in text
    assert not benchmarks.update_readme(readme, results)  # a second run changes nothing


def test_the_readme_carries_the_run_time_marks():
    text = (ROOT / "README.md").read_text()
    start, end = benchmarks.README_MARKS
    assert text.count(start) == 1 and text.count(end) == 1
    assert "Measured by `make bench-run` on " in text.split(start, 1)[1].split(end, 1)[0]

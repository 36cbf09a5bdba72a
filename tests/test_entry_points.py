"""Every command the README and docs/ name works: make targets, ``python -m msif.*`` mains and ``msif`` subcommands.

A command written in a code span or a code block of README.md or docs/*.md must be listed in ``KNOWN`` with the
test that runs it (in a smoke mode on a tiny config, asserting the table it writes) — a documented command that
no test knows fails here. Cheap checks run for all of them: a make target exists and its recipe names only
importable ``msif`` modules; a ``python -m`` main and an ``msif`` subcommand answer ``--help``.
"""

import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# command → where it is exercised for real (a smoke run on a tiny config with asserted output, or the reason it is not)
KNOWN = {
    "make run": ".ci/run and tests/test_workflow.py run the same workflow on the tiny config (.test/config/config.yaml)",
    "make test": ".ci/run calls it",
    "make setup": "every make target depends on it; CI's make test runs it on a clean clone",
    "make lint": "tests/test_lint.py (ruff, snakefmt --check, snakemake --lint, dry run)",
    "make dry-run": "test_dry_run_targets_plan_their_dags below",
    "make paper": "test_dry_run_targets_plan_their_dags below (both paper configs, planned; a real run takes hours)",
    "make docs": "tests/test_docs.py::test_the_committed_benchmarks_page_is_generated",
    "make bench": "tests/test_bench.py (python -m msif.bench.solvers --smoke: CG equals exact)",
    "make bench-scale": "tests/test_bench_scale.py (python -m msif.bench.scale on a shrunken scale config)",
    "make bench-run": "tests/test_run_time.py (python -m msif.bench.run_time --tiny)",
    "make bench-peers": "tests/test_peers.py (needs .venv-peers; skipped by choice in CI, see .ci/run)",
    "make bench-peers-cnn": "tests/test_peers.py (needs .venv-peers; skipped by choice in CI, see .ci/run)",
    "make bench-tradeoff": "tests/test_bench_tradeoff.py (python -m msif.bench.tradeoff --smoke)",
    "make bench-lds": "tests/test_bench_lds.py (python -m msif.bench.lds_protocol --smoke; dattri's rows where .venv-peers runs it)",
    "make peers-setup": "builds .venv-peers for make bench-peers",
    "make gpu-check": "tests/test_gpu_check.py (needs a CUDA device for real: its refusal without one, targets, copy, agreement)",
    "make clean": "removes results/, logs/ and .snakemake/",
    "make data-apt": "installs Fashion-MNIST (.ci/run installs the same package)",
    "python -m msif.bench.solvers": "tests/test_bench.py",
    "python -m msif.bench.scale": "tests/test_bench_scale.py",
    "python -m msif.bench.run_time": "tests/test_run_time.py",
    "python -m msif.bench.gpu_check": "tests/test_gpu_check.py",
    "python -m msif.bench.lds_protocol": "tests/test_bench_lds.py",
    "python -m msif.bench.peers.run": "tests/test_peers.py",
    "python -m msif.bench.peers": "tests/test_peers.py",
    "python -m msif.report.benchmarks": "tests/test_docs.py",
    "python -m msif.report.results": "tests/test_results_doc.py",
    "msif info": "tests/test_api.py::test_cli_info",
    "msif validate-config": "tests/test_api.py::test_cli_validate_config",
    "msif schema-docs": "tests/test_api.py::test_config_readme_matches_the_schema",
    "msif show-top": "tests/test_api.py::test_cli_show_top",
}

COMMAND = re.compile(r"(?:^|[\s`(])((?:make [a-z][a-z-]*)|(?:python -m msif(?:\.[a-z_]+)+)|(?:msif [a-z][a-z-]*(?=\s|$|`)))")


def code_of(text: str) -> str:
    """The code spans and fenced code blocks of a markdown page, one per line."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(blocks + spans)


def documented() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for page in DOCS:
        for line in code_of(page.read_text()).splitlines():
            for cmd in COMMAND.findall(" " + line.replace(".venv/bin/", "").replace("$(PY) ", "")):
                out.setdefault(cmd, []).append(page.relative_to(ROOT).as_posix())
    return out


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))


def runnable(module: str) -> bool:
    """``python -m module`` can run it: a module, or a package with a ``__main__``."""
    spec = find_spec(module)
    return spec is not None and (spec.submodule_search_locations is None or find_spec(module + ".__main__") is not None)


def test_runnable_tells_a_package_from_a_main():
    assert runnable("msif.cli") and not runnable("msif.bench") and not runnable("msif.nothing")


def test_every_named_test_file_exists():
    files = {f for where in KNOWN.values() for f in re.findall(r"tests/[a-z_]+\.py", where)}
    assert files and not [f for f in files if not (ROOT / f).exists()], sorted(f for f in files if not (ROOT / f).exists())


def test_the_docs_name_commands():
    found = documented()
    assert {"make run", "make test", "make bench"} <= set(found), sorted(found)


def test_every_documented_command_is_known_to_a_test():
    unknown = {cmd: pages for cmd, pages in documented().items() if cmd not in KNOWN}
    assert not unknown, f"commands named in the docs that no test knows (add them to KNOWN with their test): {unknown}"


def test_an_unknown_command_would_be_caught():
    line = "run `make frobnicate` then `python -m msif.nothing --x` and `msif frob`"
    assert COMMAND.findall(" " + code_of(line).replace("\n", " ")) == ["make frobnicate", "python -m msif.nothing", "msif frob"]


@pytest.mark.parametrize("target", sorted(c.split()[1] for c in KNOWN if c.startswith("make ")))
def test_make_targets_exist_and_name_importable_modules(target):
    assert target in makefile_targets(), f"make {target}: no such target in the Makefile"
    recipe = subprocess.run(["make", "-n", "--always-make", target, "VENV=.venv"], cwd=ROOT, capture_output=True, text=True)
    modules = set(re.findall(r"-m (msif(?:\.[a-z_]+)*)", recipe.stdout))
    missing = sorted(m for m in modules if not runnable(m))
    assert not missing, f"make {target} runs modules that do not exist: {missing}"


@pytest.mark.parametrize("module", sorted(c.split()[-1] for c in KNOWN if c.startswith("python -m ")))
def test_python_mains_answer_help(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr[-2000:]


@pytest.mark.parametrize("sub", sorted(c.split()[1] for c in KNOWN if c.startswith("msif ")))
def test_msif_subcommands_answer_help(sub):
    from msif import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main([sub, "--help"])
    assert exit_.value.code == 0


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/paper.yaml", "config/paper-mnist.yaml",
                                        "config/scale.yaml", "config/text.yaml"])
def test_dry_run_targets_plan_their_dags(configfile):
    """``make dry-run`` / ``make paper`` plan: every shipped config builds its DAG (Snakemake -n)."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--configfile", configfile],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

"""The style gates CI enforces: ruff, snakefmt --check, snakemake --lint, a clean dry run."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "cmd",
    [
        [str(BIN / "ruff"), "check", "src", "tests", "workflow/scripts", "examples"],
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
        [sys.executable, "-m", "snakemake", "--lint"],
        [sys.executable, "-m", "snakemake", "-n", "--quiet", "--configfile", ".test/config/config.yaml"],
    ],
    ids=["ruff", "snakefmt", "snakemake-lint", "dry-run"],
)
def test_style_gate(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if "--lint" in cmd:
        assert "Lints for" not in proc.stdout + proc.stderr

"""Shared fixtures: a copy of the workflow in a temp dir, and how to run Snakemake there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "config", ".test", "envs")  # envs: the rules name their conda env


def copy_workflow(dest: Path) -> Path:
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run Snakemake (of this interpreter's environment) in ``workdir``; output captured as text."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path)


TINY = ".test/config/config.yaml"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny config run once end to end through Snakemake, shared by every test module (read-only:
    copy it before running anything in it)."""
    wd = copy_workflow(tmp_path_factory.mktemp("wf"))
    proc = snakemake(wd, "--configfile", TINY)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return wd

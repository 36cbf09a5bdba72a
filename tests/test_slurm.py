"""End-to-end test: run a Snakemake workflow on a real SLURM through workflow/profiles/slurm.

Needs a running SLURM whose default partition accepts jobs (locally / in CI: ``bash .ci/slurm-up.sh``
starts a one-node cluster with partition ``debug`` and one fake GPU; ``bash .ci/slurm-down.sh`` stops it).
Without one the test is skipped -- unless ``CI`` is set and ``MSIF_REQUIRE_SLURM=1``, then it fails, so CI
cannot pass by silently skipping.

``run_workflow_via_slurm`` is the reusable part: give it a working directory, a Snakefile and (optionally) a
config file, and it runs Snakemake with the SLURM profile and returns the finished process and the SLURM job
ids found in ``.snakemake/slurm_logs``.  ``slurm_jobs_by_rule`` tells which rules ran in which SLURM job.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
SLURMCTLD_LOG = Path("/var/log/slurm/slurmctld.log")  # where .ci/slurm-up.sh puts it

_SUBMITTED_RE = re.compile(r"has been submitted with SLURM jobid (\d+)")
_RUN_ID_RE = re.compile(r"SLURM run ID: (\S+)")
_RULE_LINE_RE = re.compile(r"^\s*(?:local)?rule (\w+):", re.MULTILINE)


# --------------------------------------------------------------------------------------------------------------
# Is there a SLURM to talk to?
# --------------------------------------------------------------------------------------------------------------
def slurm_unavailable_reason() -> str | None:
    """None if sbatch is on PATH and sinfo reports a usable node, else why not."""
    if shutil.which("sbatch") is None:
        return "sbatch not on PATH: no SLURM here (start a local one with `bash .ci/slurm-up.sh`)"
    if shutil.which("sinfo") is None:
        return "sbatch found but sinfo is not on PATH"
    try:
        proc = subprocess.run(
            ["timeout", "20", "sinfo", "--noheader", "--format=%T"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo does not answer: {exc}"
    if proc.returncode != 0:
        return f"sinfo does not answer (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
    states = {s.strip().rstrip("*~#!%$@^-") for s in proc.stdout.split()}
    if not states & {"idle", "mixed", "allocated", "completing"}:
        return f"sinfo answers but no node can run jobs (node states: {sorted(states) or 'none'})"
    return None


def slurm_required() -> bool:
    """True in CI when SLURM is mandatory: then a missing SLURM is a failure, not a skip."""
    return bool(os.environ.get("CI")) and os.environ.get("MSIF_REQUIRE_SLURM") == "1"


def require_slurm() -> None:
    """Skip the calling test if there is no usable SLURM (fail instead if ``slurm_required()``)."""
    reason = slurm_unavailable_reason()
    if reason is None:
        return
    if slurm_required():
        pytest.fail(f"CI is set and MSIF_REQUIRE_SLURM=1, but SLURM is unusable: {reason}", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------------------------
# Running a workflow through the SLURM profile
# --------------------------------------------------------------------------------------------------------------
def _snakemake_executable() -> str:
    candidate = Path(sys.executable).with_name("snakemake")  # the project venv's
    if candidate.exists():
        return str(candidate)
    found = shutil.which("snakemake")
    if found is None:
        pytest.fail("snakemake is not installed next to the test interpreter nor on PATH", pytrace=False)
    return found


def slurm_log_files(workdir: Path) -> list[Path]:
    """SLURM job logs written by the executor plugin: .snakemake/slurm_logs/{rule_R|group_G}/[wildcards/]<jobid>.log"""
    logdir = Path(workdir) / ".snakemake" / "slurm_logs"
    return sorted(logdir.rglob("*.log")) if logdir.is_dir() else []


def _jobid_of(log: Path) -> str:
    return log.stem  # "%j.log" -> "123"; array jobs "%A_%a.log" -> "123_4"


def _jobid_sort_key(jobid: str) -> tuple[int, ...]:
    return tuple(int(p) for p in jobid.split("_") if p.isdigit())


def slurm_jobs_by_rule(workdir: Path) -> dict[str, set[str]]:
    """Map rule name -> ids of the SLURM jobs whose log shows that rule running (group jobs: several rules)."""
    by_rule: dict[str, set[str]] = {}
    for log in slurm_log_files(workdir):
        jobid = _jobid_of(log)
        text = log.read_text(errors="replace")
        rules = set(_RULE_LINE_RE.findall(text))
        top = log.relative_to(Path(workdir) / ".snakemake" / "slurm_logs").parts[0]
        if top.startswith("rule_"):
            rules.add(top.removeprefix("rule_"))
        for rule in rules:
            by_rule.setdefault(rule, set()).add(jobid)
    return by_rule


def _scancel_run(output: str, job_ids: Sequence[str]) -> None:
    """Cancel whatever a failed/timed-out run may have left in the queue."""
    if shutil.which("scancel") is None:
        return
    cmds = [["timeout", "20", "scancel", "--name", run_id] for run_id in set(_RUN_ID_RE.findall(output))]
    if job_ids:
        cmds.append(["timeout", "20", "scancel", *job_ids])
    for cmd in cmds:
        subprocess.run(cmd, capture_output=True, timeout=30, check=False)


# ==============================================================================================================
# REUSABLE ENTRY POINT -- call this with the real workflow and the tiny config, e.g.
#
#     proc, job_ids = run_workflow_via_slurm(tmp_copy, tmp_copy / "Snakefile", tmp_copy / "config/tiny.yaml",
#                                            ["--cores", "2"], timeout_s=1800)
#     assert proc.returncode == 0, proc.stdout
#     assert job_ids
#     by_rule = slurm_jobs_by_rule(tmp_copy)      # {"retrain": {"12"}, "influence": {"13"}, ...}
#
# (copy_workflow() below makes the temporary copy of the repository's workflow.)
# ==============================================================================================================
def run_workflow_via_slurm(
    workdir: Path,
    snakefile: Path,
    configfile: Path | None = None,
    extra_args: Sequence[str] = (),
    *,
    timeout_s: int = 600,
    profile: Path = SLURM_PROFILE,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``snakemake --profile <profile>`` in ``workdir`` (every job via sbatch) and wait for it.

    Returns the completed process (stdout and stderr merged into ``.stdout``) and the SLURM job ids that have a
    log under ``workdir/.snakemake/slurm_logs`` (sorted).  The run is bounded: after ``timeout_s`` seconds
    Snakemake gets SIGINT (it then cancels its SLURM jobs), and SIGKILL 60 s later; leftover jobs of the run are
    scancel-ed.  Skips (or fails, see ``require_slurm``) when there is no usable SLURM.
    """
    require_slurm()
    workdir = Path(workdir)
    cmd = [
        "timeout", "--signal=INT", "--kill-after=60", str(timeout_s),
        _snakemake_executable(),
        "--profile", str(profile),
        "--snakefile", str(snakefile),
        "--directory", str(workdir),
    ]  # fmt: skip
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    cmd += list(extra_args)
    env = os.environ.copy()
    env.pop("SNAKEMAKE_PROFILE", None)  # only the profile given here
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s + 120,
        check=False,
    )
    job_ids = sorted({_jobid_of(p) for p in slurm_log_files(workdir)}, key=_jobid_sort_key)
    if proc.returncode != 0:
        _scancel_run(proc.stdout, job_ids)
    return proc, job_ids


def copy_workflow(src: Path, dst: Path, parts: Sequence[str] = ("Snakefile", "workflow", "config")) -> Path:
    """Copy the named files/folders of a workflow (default: this repo's) to ``dst`` for an isolated run."""
    dst.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(".snakemake", "results", "logs", "__pycache__")
    for part in parts:
        s = Path(src) / part
        if s.is_dir():
            shutil.copytree(s, dst / part, ignore=ignore, dirs_exist_ok=True)
        elif s.exists():
            shutil.copy2(s, dst / part)
    return dst


def _failure_report(proc: subprocess.CompletedProcess[str], workdir: Path) -> str:
    parts = [f"snakemake exit {proc.returncode}; last output:\n{proc.stdout[-6000:]}"]
    for log in slurm_log_files(workdir)[-5:]:
        parts.append(f"--- {log}:\n{log.read_text(errors='replace')[-2000:]}")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Cases.  Each writes/copies a workflow into tmp_path and says what to expect.
# --------------------------------------------------------------------------------------------------------------
TOY_SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input:
            "results/summary.txt",

    rule prepare:
        output:
            "results/data.txt",
        resources:
            mem_mb=500,
            runtime=5,
        shell:
            "echo slurm_job=$SLURM_JOB_ID > {output}"

    # same name as the real workflow's retraining rule: the profile bundles these into group jobs
    rule retrain:
        input:
            "results/data.txt",
        output:
            "results/retrain_{i}.txt",
        resources:
            gpu=1,
            mem_mb=500,
            runtime=5,
        shell:
            "echo i={wildcards.i} slurm_job=$SLURM_JOB_ID gpus=${{CUDA_VISIBLE_DEVICES:-none}} > {output}"

    rule summarize:
        input:
            expand("results/retrain_{i}.txt", i=[1, 2, 3]),
        output:
            "results/summary.txt",
        threads: 2
        resources:
            mem_mb=800,
            runtime=5,
        shell:
            "cat {input} > {output}; echo threads={threads} slurm_job=$SLURM_JOB_ID >> {output}"
    """
)


def _toy_case(tmp_path: Path) -> dict:
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    return {
        "snakefile": tmp_path / "Snakefile",
        "configfile": None,
        "extra_args": [],
        "timeout_s": 300,
        "outputs": ["results/data.txt", *(f"results/retrain_{i}.txt" for i in (1, 2, 3)), "results/summary.txt"],
        "rules": {"prepare", "retrain", "summarize"},
        "grouped": {"retrain": 3},  # rule -> number of its jobs, all expected in ONE SLURM job (group-components)
    }


CASES = {"toy": _toy_case}


@pytest.mark.parametrize("case", sorted(CASES))
def test_workflow_runs_through_sbatch(case: str, tmp_path: Path) -> None:
    require_slurm()
    spec = CASES[case](tmp_path)

    proc, job_ids = run_workflow_via_slurm(
        tmp_path, spec["snakefile"], spec["configfile"], spec["extra_args"], timeout_s=spec["timeout_s"]
    )
    report = _failure_report(proc, tmp_path)
    assert proc.returncode == 0, report

    # every output exists
    missing = [o for o in spec["outputs"] if not (tmp_path / o).is_file()]
    assert not missing, f"missing outputs {missing}\n{report}"

    # every job went through sbatch: Snakemake reported a SLURM job id for each submission, and SLURM itself
    # wrote a log for each of those ids (the --output file of the batch script)
    submitted = set(_SUBMITTED_RE.findall(proc.stdout))
    assert submitted, f"no 'submitted with SLURM jobid' lines: nothing went through sbatch?\n{report}"
    assert submitted == set(job_ids), f"submitted {sorted(submitted)} but SLURM logs for {job_ids}\n{report}"

    by_rule = slurm_jobs_by_rule(tmp_path)
    not_via_slurm = sorted(spec["rules"] - by_rule.keys())
    assert not not_via_slurm, f"rules without a SLURM job log: {not_via_slurm} (have {by_rule})\n{report}"
    for rule in spec["rules"]:
        assert by_rule[rule] <= submitted, f"rule {rule}: SLURM jobs {by_rule[rule]} not submitted by this run"

    # rules bundled by the profile's groups/group-components ran together in one SLURM job
    for rule, n_jobs in spec.get("grouped", {}).items():
        assert len(by_rule[rule]) == 1, f"{rule}: expected its {n_jobs} jobs in one SLURM job, got {by_rule[rule]}"
        (jobid,) = by_rule[rule]
        logs = [p for p in slurm_log_files(tmp_path) if _jobid_of(p) == jobid]
        ran = sum(len(re.findall(rf"^\s*(?:local)?rule {rule}:", p.read_text(), re.MULTILINE)) for p in logs)
        assert ran >= n_jobs, f"{rule}: SLURM job {jobid} log shows {ran} of {n_jobs} jobs"

    # the controller's own log confirms the batch submissions (when readable, as on the local test cluster)
    if SLURMCTLD_LOG.is_file() and os.access(SLURMCTLD_LOG, os.R_OK):
        ctld = SLURMCTLD_LOG.read_text(errors="replace")
        unseen = [j for j in job_ids if not re.search(rf"_slurm_rpc_submit_batch_job: JobId={j}\b", ctld)]
        assert not unseen, f"slurmctld.log has no batch submission for SLURM jobs {unseen}"


def test_missing_slurm_is_a_skip_or_ci_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without sbatch: skip normally, fail when CI demands SLURM (guards against CI silently skipping)."""
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert slurm_unavailable_reason() is not None

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("MSIF_REQUIRE_SLURM", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_slurm()

    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("MSIF_REQUIRE_SLURM", "1")
    with pytest.raises(pytest.fail.Exception):
        require_slurm()

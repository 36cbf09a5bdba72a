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

import difflib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
SLURM_GPU_PROFILE = REPO / "workflow" / "profiles" / "slurm-gpu"  # + gpu: 1 for the rules that train or solve
SLURMCTLD_LOG = Path("/var/log/slurm/slurmctld.log")  # where .ci/slurm-up.sh puts it

_SUBMITTED_RE = re.compile(r"has been submitted with SLURM jobid (\d+)")
_RUN_ID_RE = re.compile(r"SLURM run ID: (\S+)")
_RULE_LINE_RE = re.compile(r"^\s*(?:local)?rule (\w+):", re.MULTILINE)
# the job header Snakemake prints: "rule X:" (or "localrule X:"; indented for the jobs of a group job) and its
# indented "key: value" fields (output:, jobid:, ...)
_JOB_HEADER_RE = re.compile(r"^[ \t]*(?:local)?rule (\w+):[ \t]*\n((?:[ \t]+\w+: .*\n)*)", re.MULTILINE)
_JOB_FIELD_RE = re.compile(r"^[ \t]+(\w+): (.*)$", re.MULTILINE)
_FINISHED_RE = re.compile(r"Finished jobid: (\d+) \(Rule: (\w+)\)")
# inside a SLURM job the slurm-jobstep executor runs each job as "localrule X:" (the outer "rule X:" is the
# plan): one such header per job that really ran there
_EXECUTED_RE = re.compile(r"^localrule (\w+):", re.MULTILINE)


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


def slurm_job_counts_by_rule(workdir: Path) -> Counter[str]:
    """Rule -> how many of its jobs SLURM jobs executed (the ``localrule X:`` headers in the SLURM logs)."""
    return Counter(rule for log in slurm_log_files(workdir) for rule in _EXECUTED_RE.findall(log.read_text(errors="replace")))


@dataclass(frozen=True)
class Job:
    """A job as Snakemake announced it in its output."""

    rule: str
    jobid: str
    outputs: tuple[str, ...]


def announced_jobs(output: str) -> list[Job]:
    """Every job header (``rule X:`` / ``localrule X:`` with its indented fields) in Snakemake's output; a job with
    outputs counted once even if announced twice."""
    jobs, seen = [], set()
    for m in _JOB_HEADER_RE.finditer(output):
        fields = dict(_JOB_FIELD_RE.findall(m.group(2)))
        outputs = tuple(o.strip() for o in fields.get("output", "").split(",") if o.strip())
        if outputs and outputs in seen:
            continue
        seen.add(outputs)
        jobs.append(Job(m.group(1), fields.get("jobid", ""), outputs))
    return jobs


def finished_jobs(output: str) -> list[Job]:
    """The jobs that Snakemake's output reports as finished ("Finished jobid: N (Rule: X)")."""
    by_id = {(j.jobid, j.rule): j for j in announced_jobs(output)}
    return [by_id.get(key, Job(key[1], key[0], ())) for key in _FINISHED_RE.findall(output)]


def _scontrol_job_field(jobid: str, field: str) -> str:
    """A field of ``scontrol show job`` (kept by SLURM until MinJobAge, 300 s, after the job ended); '' if absent."""
    proc = subprocess.run(
        ["timeout", "20", "scontrol", "show", "job", "--oneliner", jobid],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"scontrol show job {jobid}: {proc.stderr.strip()} (purged after MinJobAge?)"
    m = re.search(rf"(?:^|\s){field}=(\S*)", proc.stdout)
    return m.group(1) if m else ""


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
def _slurm_command(
    workdir: Path,
    snakefile: Path,
    configfile: Path | None,
    extra_args: Sequence[str],
    *,
    timeout_s: int,
    profile: Path,
) -> tuple[list[str], dict[str, str]]:
    """The bounded ``snakemake --profile <profile>`` command line (SIGINT after ``timeout_s``) and its env."""
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
    return cmd, env


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
    cmd, env = _slurm_command(workdir, snakefile, configfile, extra_args, timeout_s=timeout_s, profile=profile)
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


def interrupt_workflow_via_slurm(
    workdir: Path,
    snakefile: Path,
    configfile: Path | None,
    when: re.Pattern[str],
    extra_args: Sequence[str] = (),
    *,
    ready: Callable[[str], bool] | None = None,
    ready_timeout_s: int = 300,
    timeout_s: int = 600,
    profile: Path = SLURM_PROFILE,
) -> tuple[subprocess.CompletedProcess[str], str | None]:
    """Like ``run_workflow_via_slurm``, but interrupt Snakemake (SIGINT, as Ctrl-C) once an output line matches
    ``when`` -- and, given ``ready``, once ``ready(that line)`` is true (polled each second, at most
    ``ready_timeout_s``) -- then scancel whatever the run left in the queue: a run killed partway.

    Returns the process (output merged into ``.stdout``) and the line that triggered the interrupt (None if no line
    matched before the run ended by itself).
    """
    require_slurm()
    workdir = Path(workdir)
    cmd, env = _slurm_command(workdir, snakefile, configfile, extra_args, timeout_s=timeout_s, profile=profile)
    lines: list[str] = []
    trigger = None

    def interrupt(popen: subprocess.Popen[str], line: str) -> None:
        deadline = time.monotonic() + ready_timeout_s
        while ready is not None and popen.poll() is None and time.monotonic() < deadline and not ready(line):
            time.sleep(1)
        if popen.poll() is None:
            popen.send_signal(signal.SIGINT)  # `timeout` passes it on to Snakemake

    with subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as popen:
        assert popen.stdout is not None
        interrupter = None
        for line in popen.stdout:  # ends: Snakemake exits by itself, on the SIGINT, or by `timeout`
            lines.append(line)
            if trigger is None and when.search(line):
                trigger = line.strip()
                interrupter = threading.Thread(target=interrupt, args=(popen, trigger), daemon=True)
                interrupter.start()  # keeps reading the output meanwhile
        try:
            returncode = popen.wait(timeout=120)
        except subprocess.TimeoutExpired:
            popen.kill()
            returncode = popen.wait()
        if interrupter is not None:
            interrupter.join(timeout=5)
    output = "".join(lines)
    _scancel_run(output, sorted({_jobid_of(p) for p in slurm_log_files(workdir)}, key=_jobid_sort_key))
    return subprocess.CompletedProcess(cmd, returncode, output), trigger


def slurm_log_of(line: str) -> Path | None:
    """The SLURM log named in a "... submitted with SLURM jobid N (log: PATH)." line."""
    m = re.search(r"\(log: (\S+?)\)", line)
    return Path(m.group(1)) if m else None


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
        "gpus": {"prepare": False, "retrain": True, "summarize": False},  # rule -> does its SLURM job get a GPU
    }


def _toy_gpu_case(tmp_path: Path) -> dict:
    """The toy whose `retrain` declares gpu=0 like the real rules: the GPU profile's set-resources gives it one."""
    spec = _toy_case(tmp_path)
    snakefile = spec["snakefile"]
    snakefile.write_text(snakefile.read_text().replace("gpu=1,", "gpu=0,"))
    spec["profile"] = SLURM_GPU_PROFILE
    return spec


# --- the real workflow with the tiny config (.test/config/config.yaml), compared with a local run ------------------
TINY_CONFIG = ".test/config/config.yaml"
TINY_RESULTS = "results/tiny"  # its `run: tiny`
# Compared with the local (non-SLURM) run of the same config, bit for bit: on CPU every job is deterministic (the
# same code, data, seeds and threads), so where a job runs must not change a single bit of what it writes.
SAME_AS_LOCAL = ("validation/leave_k_out.csv", "validation/summary.csv", "seed*/influence/*/*/scores.pt")


@dataclass(frozen=True)
class LocalRun:
    workdir: Path  # a finished local run of the tiny config (read-only)
    jobs: Counter[str]  # rule -> number of its jobs in that run (rule `all` left out)


@pytest.fixture(scope="module")
def local_tiny_run(request: pytest.FixtureRequest) -> LocalRun:
    """The tiny config run locally (no SLURM), the reference of the SLURM runs: conftest's session-wide ``tiny_run``
    (one local run shared with the other workflow tests)."""
    require_slurm()  # before the local run: worth its minutes only when a SLURM test will use it
    workdir = Path(request.getfixturevalue("tiny_run"))
    # the run's own log; the oldest one, in case later tests dry-ran in the same directory
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    assert logs, f"no Snakemake log in the local tiny run {workdir}"
    text = logs[0].read_text(errors="replace")
    assert "(100%) done" in text, f"{logs[0]} is not the log of a complete run"
    return LocalRun(workdir, Counter(j.rule for j in announced_jobs(text) if j.rule != "all"))


def assert_same_results(reference: Path, results: Path, patterns: Sequence[str] = SAME_AS_LOCAL) -> list[str]:
    """Each file matching ``patterns`` under the results dir ``reference`` is also under ``results``, bit for bit:
    CSVs byte-equal, every tensor of a .pt with the same keys, dtype, shape and bytes.  Returns what was compared."""
    from msif.io import load_tensors

    compared, diffs = [], []
    for pattern in patterns:
        refs = sorted(Path(reference).glob(pattern))
        assert refs, f"the reference run has no {pattern} under {reference}"
        for ref in refs:
            rel = ref.relative_to(reference).as_posix()
            other = Path(results) / rel
            compared.append(rel)
            if not other.is_file():
                diffs.append(f"{rel}: missing")
            elif ref.suffix == ".pt":
                a, b = load_tensors(ref), load_tensors(other)
                if a.keys() != b.keys():
                    diffs.append(f"{rel}: tensors {sorted(a)} vs {sorted(b)}")
                for key in sorted(a.keys() & b.keys()):
                    x, y = a[key], b[key]
                    if x.dtype != y.dtype or x.shape != y.shape:
                        diffs.append(f"{rel}[{key}]: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
                    elif x.numpy().tobytes() != y.numpy().tobytes():
                        delta = (x.double() - y.double()).abs().max().item()
                        diffs.append(f"{rel}[{key}]: not bitwise equal (max |difference| {delta:.3g})")
            elif ref.read_bytes() != other.read_bytes():
                diff = difflib.unified_diff(
                    ref.read_text().splitlines(), other.read_text().splitlines(), "local", "slurm", lineterm="", n=0
                )
                diffs.append(f"{rel}: differs\n" + "\n".join(list(diff)[:20]))
    assert not diffs, "results differ from the local run:\n" + "\n".join(diffs)
    return compared


# The real workflow (tiny config) through SLURM is test_killed_slurm_run_resumes: its killed and resumed runs
# together are one complete run, checked job by job and bit by bit against the local run (one SLURM run, not two).
CASES = {"toy": _toy_case, "toy-gpu": _toy_gpu_case}
CASE_MARKS: dict[str, list] = {}


@pytest.mark.parametrize("case", [pytest.param(c, marks=CASE_MARKS.get(c, ())) for c in sorted(CASES)])
def test_workflow_runs_through_sbatch(case: str, tmp_path: Path) -> None:
    require_slurm()
    spec = CASES[case](tmp_path)

    start = time.monotonic()
    proc, job_ids = run_workflow_via_slurm(
        tmp_path,
        spec["snakefile"],
        spec["configfile"],
        spec["extra_args"],
        timeout_s=spec["timeout_s"],
        profile=spec.get("profile", SLURM_PROFILE),
    )
    report = _failure_report(proc, tmp_path)
    assert proc.returncode == 0, report
    print(f"{case}: {len(job_ids)} SLURM jobs, {time.monotonic() - start:.0f} s")

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

    # GPUs: SLURM allocated one to exactly the jobs of the rules that ask for one (sbatch --gpus), and the job saw it
    for rule, wants_gpu in spec.get("gpus", {}).items():
        for jobid in by_rule[rule]:
            tres = _scontrol_job_field(jobid, "TresPerJob")
            assert ("gpu" in tres) == wants_gpu, f"rule {rule}: SLURM job {jobid} has TresPerJob={tres!r}"
    if spec.get("gpus", {}).get("retrain"):
        unseen = [p.name for p in tmp_path.glob("results/retrain_*.txt") if "gpus=none" in p.read_text()]
        assert not unseen, f"no CUDA_VISIBLE_DEVICES inside the GPU jobs writing {unseen}"

    # the controller's own log confirms the batch submissions (when readable, as on the local test cluster)
    if SLURMCTLD_LOG.is_file() and os.access(SLURMCTLD_LOG, os.R_OK):
        ctld = SLURMCTLD_LOG.read_text(errors="replace")
        unseen = [j for j in job_ids if not re.search(rf"_slurm_rpc_submit_batch_job: JobId={j}\b", ctld)]
        assert not unseen, f"slurmctld.log has no batch submission for SLURM jobs {unseen}"


# a retraining job (alone, or bundled in a group job) has just been handed to sbatch
_RETRAIN_SUBMITTED_RE = re.compile(
    r"has been submitted with SLURM jobid \d+ \(log: .*/slurm_logs/(?:rule_retrain|group_retrain\w*)/"
)


def _queued_jobs_of(output: str) -> str:
    """squeue's lines for the jobs of the run(s) whose SLURM run IDs appear in ``output`` (pending, running, ending)."""
    names = ",".join(sorted(set(_RUN_ID_RE.findall(output))))
    proc = subprocess.run(
        ["timeout", "20", "squeue", "--noheader", f"--name={names}", "--states=PD,R,CG,CF,S"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return proc.stdout.strip()


@pytest.mark.workflow
def test_killed_slurm_run_resumes(tmp_path: Path, local_tiny_run: LocalRun) -> None:
    """The tiny workflow on SLURM, killed partway -- Ctrl-C once the first retraining job runs inside SLURM, its jobs
    cancelled -- resumes with ``--rerun-incomplete``: what finished is not recomputed, what was cut off is, and the
    final tables equal the local run's."""
    require_slurm()
    from conftest import copy_workflow as copy_repo_workflow

    copy_repo_workflow(tmp_path)
    snakefile, configfile, results = tmp_path / "Snakefile", tmp_path / TINY_CONFIG, tmp_path / TINY_RESULTS

    def retraining_runs(submitted: str) -> bool:  # its SLURM job has started the rule
        log = slurm_log_of(submitted)
        return log is not None and log.is_file() and bool(re.search(r"^localrule retrain:", log.read_text(), re.M))

    # 1. killed partway
    start = time.monotonic()
    killed, trigger = interrupt_workflow_via_slurm(
        tmp_path, snakefile, configfile, _RETRAIN_SUBMITTED_RE, ready=retraining_runs, timeout_s=1500
    )
    killed_s = time.monotonic() - start
    report = _failure_report(killed, tmp_path)
    assert trigger is not None, f"the run ended before a retraining job was submitted\n{report}"
    assert retraining_runs(trigger), f"interrupted before the retraining started in SLURM\n{report}"
    assert killed.returncode != 0, f"the interrupted run claims success\n{report}"
    assert not (results / "validation/summary.csv").exists(), report
    for _ in range(60):  # cancelled jobs take a moment to leave the queue
        if not (left := _queued_jobs_of(killed.stdout)):
            break
        time.sleep(1)
    assert not left, f"jobs of the killed run still queued:\n{left}"
    finished = [j for j in finished_jobs(killed.stdout) if j.outputs]
    assert finished, f"nothing finished before the kill\n{report}"
    cut_off = [j for j in announced_jobs(killed.stdout) if j.rule == "retrain"]
    assert cut_off and not any((tmp_path / out).exists() for j in cut_off for out in j.outputs), (
        f"the retraining finished before the kill: too late to test\n{report}"
    )
    stamps = {out: (tmp_path / out).stat().st_mtime_ns for j in finished for out in j.outputs}

    # 2. resumed (the profile sets rerun-incomplete already; given here as the README says)
    start = time.monotonic()
    resumed, _ = run_workflow_via_slurm(tmp_path, snakefile, configfile, ["--rerun-incomplete"], timeout_s=1500)
    resumed_s = time.monotonic() - start
    report = _failure_report(resumed, tmp_path)
    assert resumed.returncode == 0, report
    submitted = set(_SUBMITTED_RE.findall(resumed.stdout))
    assert submitted, f"the resumed run submitted nothing to SLURM\n{report}"
    redone = [j for j in announced_jobs(resumed.stdout) if j.outputs]
    recomputed = sorted({out for j in redone for out in j.outputs} & stamps.keys())
    assert not recomputed, f"finished before the kill, yet recomputed: {recomputed}"
    touched = sorted(out for out, ns in stamps.items() if (tmp_path / out).stat().st_mtime_ns != ns)
    assert not touched, f"outputs of finished jobs rewritten by the resumed run: {touched}"
    assert {j.outputs for j in cut_off} <= {j.outputs for j in redone}, f"cut-off retraining not redone\n{report}"

    # 3. every job of the local run ran exactly once to the end, each inside a SLURM job, and the results are the
    # local run's
    # A job can end inside SLURM in the instant the run is killed: its outputs are complete (its SLURM log says it
    # finished), but the killed run never polled it, so neither run reports it ("ended unseen"); it ran once, to the end.
    redone_outputs = {j.outputs for j in redone}
    ended_unseen = [j for j in announced_jobs(killed.stdout) if j.outputs and j not in finished and j.outputs not in redone_outputs
                    and all((tmp_path / out).exists() for out in j.outputs)]

    def ended_in_slurm(job) -> bool:  # its SLURM log (named where the killed run submitted it) reports it finished
        line = next((ln for ln in killed.stdout.splitlines() if ln.startswith(f"Job {job.jobid} has been submitted")), "")
        log = slurm_log_of(line)
        return log is not None and log.is_file() and "Finished jobid" in log.read_text()

    assert all(map(ended_in_slurm, ended_unseen)), f"ended unseen without a finished SLURM log: {ended_unseen}"
    assert (Counter(j.rule for j in finished) + Counter(j.rule for j in ended_unseen) + Counter(j.rule for j in redone)
            == local_tiny_run.jobs)
    by_rule = slurm_jobs_by_rule(tmp_path)  # both runs' SLURM logs
    not_via_slurm = sorted(local_tiny_run.jobs.keys() - by_rule.keys())
    assert not not_via_slurm, f"rules without a SLURM job log: {not_via_slurm} (have {by_rule})\n{report}"
    # the profile's group bundles the redone retraining jobs into one SLURM job
    regrouped = by_rule["retrain"] & submitted
    assert len(regrouped) == 1, f"retraining redone in SLURM jobs {sorted(regrouped)}, expected one group job\n{report}"
    compared = assert_same_results(local_tiny_run.workdir / TINY_RESULTS, results)
    print(
        f"killed after {killed_s:.0f} s, {len(finished)} jobs finished, retraining cut off ({trigger}); "
        f"resumed in {resumed_s:.0f} s: {len(redone)} jobs ({', '.join(sorted({j.rule for j in redone}))}) in "
        f"{len(submitted)} SLURM jobs; bitwise equal to the local run: {', '.join(compared)}"
    )


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

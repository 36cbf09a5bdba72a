"""Interrupted runs and concurrent runs, through Snakemake, on a copy of the tiny run.

The copy keeps the tiny run's trained stages and scores and forgets its validation tables, with
``validation.sets_per_job: 2`` so the retraining fans out into 6 jobs per scenario, run one at a time. It is killed in
the middle of that fan-out — first with SIGTERM (to the whole process group, as ``scancel`` or a
scheduler's time limit does), then, resumed with ``--rerun-incomplete``, with SIGKILL (a lost node);
``--unlock`` and ``--rerun-incomplete`` finish it. Nothing completed is recomputed and the final
tables are identical, byte for byte, to the uninterrupted run's. While the first run holds its lock,
the same run is refused and a run under another ``run:`` name proceeds beside it.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, copy_workflow, snakemake

RUN = "tiny"
RETRAIN = f"results/{RUN}/seed0/validation/*/retrain/batch*.csv"


def start(wd: Path, name: str, *args: str, cores: int = 2) -> subprocess.Popen:
    """Snakemake in the background, in its own process group (so a signal reaches all of its jobs)."""
    with open(wd / f"{name}.out", "w") as out:  # the child writes to its own copy of the file descriptor
        return subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", str(cores), *args], cwd=wd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(cond, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"Snakemake ended (rc {proc.returncode}) before the condition held"
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.2)


def kill(proc: subprocess.Popen, sig: signal.Signals) -> int:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # it ended by itself: its exit status tells
        pass
    return proc.wait(timeout=120)


def run_briefly(wd: Path, name: str, *args: str, timeout: float = 90) -> tuple[int | None, str]:
    """Snakemake that should be refused at once: (exit status or None if it was still running at ``timeout``, output)."""
    proc = start(wd, name, *args)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc, signal.SIGKILL)
        rc = None
    return rc, (wd / f"{name}.out").read_text()


def mtimes(wd: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(wd)): p.stat().st_mtime_ns for p in wd.glob(pattern)}


def upstream(wd: Path) -> dict[str, int]:
    """The trained stages and scores: every file under data/, train/ and influence/ except the group predictions
    (``influence/<scenario>/group.pt``: they read the removal sets, whose batching interrupt.yaml changes, so they are
    downstream of them like the retraining)."""
    return {p: t for p, t in mtimes(wd, f"results/{RUN}/seed0/[dti]*/**/*.*").items() if "/group.pt" not in p}


def incomplete(wd: Path) -> set[str]:
    """Outputs Snakemake marked incomplete (a job was running when it was killed)."""
    d = wd / ".snakemake/incomplete"
    return {base64.b64decode(p.name).decode() for p in d.iterdir()} if d.exists() else set()


def jobs_run(output: str, rule: str) -> set[tuple[str, str]]:
    """(scenario, batch) of every ``rule`` job a Snakemake log says it started."""
    found = set()
    for wildcards in re.findall(rf"rule {rule}:\n(?:    .*\n)*?    wildcards: (.*)\n", output):
        w = dict(kv.split("=", 1) for kv in wildcards.split(", "))
        found.add((w["scenario"], w["batch"]))
    return found


@pytest.fixture(scope="module")
def interrupted(tiny_run, tmp_path_factory) -> dict:
    wd = tmp_path_factory.mktemp("interrupted")
    shutil.copytree(tiny_run, wd, dirs_exist_ok=True)
    res = wd / "results" / RUN
    seed0 = res / "seed0/validation"
    forget = [*wd.glob(RETRAIN), seed0 / "leave_k_out.csv", seed0 / "summary.csv", seed0 / "lds.csv",
              res / "validation/leave_k_out.csv", res / "validation/summary.csv", res / "validation/lds.csv", res / "report.html"]
    assert len(forget) == 9, forget  # the two scenarios' retraining batches and every table built on them
    for p in forget:
        p.unlink()
    cfg = yaml.safe_load((wd / TINY).read_text())
    cfg["validation"]["sets_per_job"] = 2
    (wd / "interrupt.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (wd / "side.yaml").write_text(yaml.safe_dump(cfg | {"run": "side"}, sort_keys=False))
    conf = (f"results/{RUN}/validation/summary.csv", "--configfile", "interrupt.yaml")  # the tables; the report is not needed
    obs: dict = {"wd": wd, "upstream": upstream(wd)}

    # 1. the fan-out starts; while the run holds its lock, the same run is refused, another run proceeds
    p1 = start(wd, "run1", *conf, cores=1)  # one job at a time: the fan-out lasts long enough to interrupt
    wait_for(lambda: len(list(wd.glob(RETRAIN))) >= 1, p1)
    obs["same_run"] = run_briefly(wd, "same_run", *conf, "--rerun-incomplete", timeout=45)  # refused within seconds
    obs["side_run"] = snakemake(wd, "results/side/seed0/data/splits.pt", "--configfile", "side.yaml", timeout=120)  # target first
    obs["first_still_running"] = p1.poll() is None
    obs["term_rc"] = kill(p1, signal.SIGTERM)
    obs["after_term"] = mtimes(wd, RETRAIN)
    obs["locks_after_term"] = list((wd / ".snakemake/locks").glob("*")) if (wd / ".snakemake/locks").exists() else []
    obs["incomplete_after_term"] = incomplete(wd)
    obs["tmp_after_term"] = list(wd.glob("results/**/.*.tmp"))

    # 2. resumed, then SIGKILLed in the middle of the fan-out
    p2 = start(wd, "run2", *conf, "--rerun-incomplete", cores=1)
    wait_for(lambda: len(list(wd.glob(RETRAIN))) > len(obs["after_term"]), p2)
    obs["kill_rc"] = kill(p2, signal.SIGKILL)
    obs["after_kill"] = mtimes(wd, RETRAIN)
    obs["incomplete_after_kill"] = incomplete(wd)
    obs["locked"] = run_briefly(wd, "locked", *conf, "--rerun-incomplete")
    obs["unlock"] = snakemake(wd, *conf, "--unlock", timeout=120)
    obs["finish"] = snakemake(wd, *conf, "--rerun-incomplete", timeout=600)
    obs["final"] = mtimes(wd, RETRAIN)
    return obs


@pytest.mark.workflow
def test_sigterm_stops_cleanly_and_the_rerun_finishes(interrupted):
    o = interrupted
    assert o["term_rc"] != 0 and o["after_term"], "SIGTERM must land in the middle of the fan-out"
    assert not o["locks_after_term"] and not o["incomplete_after_term"], "SIGTERM: Snakemake cleans up its lock and partial outputs"
    assert not o["tmp_after_term"], o["tmp_after_term"]
    assert o["finish"].returncode == 0, o["finish"].stderr[-3000:]


@pytest.mark.workflow
def test_sigkill_needs_unlock_then_rerun_incomplete_finishes(interrupted):
    o = interrupted
    assert o["kill_rc"] == -signal.SIGKILL and len(o["after_kill"]) > len(o["after_term"])
    rc, out = o["locked"]
    assert rc not in (0, None) and "Directory cannot be locked" in out and "--unlock" in out, out[-2000:]
    assert o["unlock"].returncode == 0 and "Unlocked working directory" in o["unlock"].stdout + o["unlock"].stderr
    assert o["finish"].returncode == 0, o["finish"].stderr[-3000:]


@pytest.mark.workflow
def test_completed_jobs_are_not_recomputed(interrupted):
    o = interrupted
    assert upstream(o["wd"]) == o["upstream"], "trained stages and scores were rewritten"
    kept = {p: t for p, t in o["after_kill"].items() if p not in o["incomplete_after_kill"]}
    assert {p: o["final"][p] for p in kept} == kept, "a completed retraining batch was recomputed"
    rerun = jobs_run(o["finish"].stdout + o["finish"].stderr, "retrain")
    done = {re.search(r"/validation/(\w+)/retrain/batch(\d+)\.csv$", p).groups() for p in kept}
    assert rerun and not rerun & done, (rerun, done)
    assert len(o["final"]) == 2 * 12 // 2 and not list(o["wd"].glob("results/**/.*.tmp"))


@pytest.mark.workflow
def test_interrupted_run_ends_identical_to_the_uninterrupted_one(interrupted, tiny_run):
    for table in ("leave_k_out.csv", "summary.csv"):
        mine = (interrupted["wd"] / f"results/{RUN}/validation/{table}").read_bytes()
        assert mine == (tiny_run / f"results/{RUN}/validation/{table}").read_bytes(), table


@pytest.mark.workflow
def test_the_same_run_twice_is_refused_by_the_lock(interrupted):
    o = interrupted
    rc, out = o["same_run"]
    assert rc not in (0, None) and "Directory cannot be locked" in out, out[-2000:]


@pytest.mark.workflow
def test_another_run_name_proceeds_side_by_side(interrupted):
    o = interrupted
    assert o["side_run"].returncode == 0, o["side_run"].stderr[-2000:]
    assert o["first_still_running"], "the side run should have overlapped the first one"
    assert (o["wd"] / "results/side/seed0/data/splits.pt").exists() and (o["wd"] / "logs/side/seed0/prepare_data.log").exists()
    assert re.findall(r"rule (\w+):", o["side_run"].stdout + o["side_run"].stderr) == ["prepare_data"]


def test_every_output_log_and_benchmark_of_a_run_is_under_its_name(tmp_path):
    """The DAG of a run named ``other`` writes only under results/other/ and logs/other/ (dry run, every job)."""
    wd = copy_workflow(tmp_path)
    cfg = yaml.safe_load((ROOT / TINY).read_text()) | {"run": "other"}
    (wd / "other.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = snakemake(wd, "-n", "--forceall", "--configfile", "other.yaml", timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    paths = [p.strip() for line in re.findall(r"^\s+(?:output|log|benchmark): (.*)$", out, re.M) for p in line.split(",")]
    assert len(paths) > 30
    assert all(p.startswith(("results/other/", "logs/other/")) for p in paths), [p for p in paths if "/other/" not in p]


def test_each_seed_is_a_replicate_and_one_aggregate_pools_them(tmp_path):
    """seeds: [0, 1] — every per-seed job twice, under seed0/ and seed1/; one
    aggregate reads both seeds' tables and writes the run's."""
    wd = copy_workflow(tmp_path)
    cfg = yaml.safe_load((ROOT / TINY).read_text()) | {"seeds": [0, 1]}
    (wd / "two.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = snakemake(wd, "-n", "--forceall", "--configfile", "two.yaml", timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out[out.index("Job stats"):], re.M))
    assert counts["prepare_data"] == "2" and counts["compare"] == "2" and counts["aggregate"] == "1", counts
    outputs = [p.strip() for line in re.findall(r"^\s+output: (.*)$", out, re.M) for p in line.split(",")]
    per_seed = [p for p in outputs if "/seed" in p]
    assert {p.split("/")[2] for p in per_seed} == {"seed0", "seed1"}
    assert sorted(p for p in outputs if "/seed" not in p) == sorted(
        f"results/tiny/{f}" for f in ("validation/leave_k_out.csv", "validation/summary.csv", "validation/lds.csv", "report.html",
                                      "tables/summary.csv", "tables/paper_table.md"))
    agg = out[out.index("rule aggregate:"):]
    agg_inputs = re.search(r"^\s+input: (.*)$", agg, re.M).group(1)
    assert all(f"results/tiny/seed{s}/validation/{t}.csv" in agg_inputs for s in (0, 1) for t in ("summary", "leave_k_out", "lds"))

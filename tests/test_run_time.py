"""Start-up measurement (``msif.logs.job``) and the run-time benchmark (``python -m msif.bench.run_time``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from conftest import ROOT
from msif.bench import run_time
from msif.logs import END_RE, START_RE, process_age

SCRIPT = """
import time
time.sleep({sleep})
from msif.logs import job
with job({log!r}):
    x = sum(i * i for i in range(2_000_000))  # some CPU inside the job
"""


def test_job_logs_its_rule_startup_wall_and_cpu(tmp_path):
    log = tmp_path / "job.log"
    script = tmp_path / "tmpabcd1234.retrain.py"  # how Snakemake names rule retrain's script
    script.write_text(SCRIPT.format(sleep=0.5, log=str(log)))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    elapsed = time.perf_counter() - t0
    text = log.read_text()
    start, end = START_RE.search(text), END_RE.search(text)
    assert start and end, text
    assert start["rule"] == end["rule"] == "retrain" and end["status"] == "ok" and end["dynamo"] == "0"
    startup, wall, cpu = float(start["startup"]), float(end["wall"]), float(end["cpu"])
    assert 0.5 <= startup < wall <= elapsed + 0.05  # the sleep before job() is start-up; all of it lies within the process
    assert 0 < cpu <= wall * 1.5 + 0.1


def test_a_failed_job_logs_its_end_too(tmp_path):
    log = tmp_path / "job.log"
    code = f"from msif.logs import job\nwith job({str(log)!r}):\n    raise ValueError('boom')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    end = END_RE.search(log.read_text())
    assert end and end["status"] == "failed" and end["rule"] == "-"


def test_job_sets_deterministic_kernels_without_importing_dynamo(tmp_path):
    """torch.use_deterministic_algorithms imports torch._inductor.config, hence torch._dynamo (1–4 s): job() sets the same flag
    without it."""
    code = (f"import sys, torch\nfrom msif.logs import job\nwith job({str(tmp_path / 'job.log')!r}):\n"
            "    print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),"
            " 'torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["True", "False", "False"]


def test_a_torch_func_job_says_it_imported_dynamo(tmp_path):
    log = tmp_path / "job.log"
    code = (f"from msif.logs import job\nwith job({str(log)!r}):\n    import torch\n"
            "    torch.func.grad(lambda x: (x ** 2).sum())(torch.ones(3))\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert END_RE.search(log.read_text())["dynamo"] == "1"


def test_process_age_agrees_with_psutil():
    psutil = pytest.importorskip("psutil")
    assert abs(process_age() - (time.time() - psutil.Process().create_time())) < 1.1  # psutil: boot time to whole seconds


SNAKEMAKE_LOG = textwrap.dedent("""\
    Job stats:
    job        count
    -------  -------
    retrain        2
    total          2

    Select jobs to execute...
    [Tue Dec  1 12:04:27 2026]
    localrule prepare_data:
        output: results/tiny/seed0/data/splits.pt
        log: logs/tiny/seed0/prepare_data.log
        jobid: 2
        reason: Missing output files
    Shell command: None
    [Tue Dec  1 12:04:30 2026]
    rule retrain:
        input: a, b
        log: logs/tiny/seed0/validation/fixed_retrain_batch0.log
        jobid: 7
        benchmark: logs/tiny/seed0/benchmarks/fixed_retrain_batch0.tsv
        wildcards: seed=0, scenario=fixed, batch=0
    [Tue Dec  1 12:04:39 2026]
    Finished jobid: 2 (Rule: prepare_data)
    1 of 2 steps (50%) done
    [Tue Dec  1 12:04:58 2026]
    Finished jobid: 7 (Rule: retrain)
    """)


def test_the_snakemake_log_gives_each_job_its_rule_files_and_times():
    jobs = {j.jobid: j for j in run_time.parse_snakemake_log(SNAKEMAKE_LOG)}
    assert set(jobs) == {2, 7}
    assert jobs[2].rule == "prepare_data" and jobs[2].log == "logs/tiny/seed0/prepare_data.log" and jobs[2].benchmark is None
    assert jobs[7].rule == "retrain" and jobs[7].benchmark == "logs/tiny/seed0/benchmarks/fixed_retrain_batch0.tsv"
    assert (jobs[2].end - jobs[2].start).total_seconds() == 12 and (jobs[7].end - jobs[7].start).total_seconds() == 28


def test_rule_table_prefers_benchmarks_then_job_logs(tmp_path):
    (tmp_path / "logs/tiny/seed0/benchmarks").mkdir(parents=True)
    (tmp_path / "logs/tiny/seed0/validation").mkdir(parents=True)
    (tmp_path / "logs/tiny/seed0/benchmarks/fixed_retrain_batch0.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n20.5\t0:00:20\t1\t1\t1\t1\t0\t0\t50\t9.5\n")
    (tmp_path / "logs/tiny/seed0/validation/fixed_retrain_batch0.log").write_text(
        "x INFO msif: msif job start: rule=retrain startup_s=4.250\n"
        "x INFO msif: msif job end: rule=retrain wall_s=21.000 cpu_s=12.000 status=ok dynamo=1\n")
    (tmp_path / "logs/tiny/seed0/prepare_data.log").write_text(
        "x INFO msif: msif job start: rule=prepare_data startup_s=3.000\nx INFO msif: msif job end: rule=prepare_data wall_s=5.500 cpu_s=4.000 status=ok\n")
    log = tmp_path / "snakemake.log"
    log.write_text(SNAKEMAKE_LOG)
    table = run_time.rule_table(run_time.job_table(tmp_path, log), "tiny", 40.0, 2, {"load_before": 1.0, "load_mean": 2.0, "load_after": 3.0})
    assert list(table.columns) == run_time.COLUMNS
    rows = table.set_index("rule")
    assert rows.loc["retrain", "wall_s"] == 20.5 and rows.loc["retrain", "wall_source"] == "benchmark"
    assert rows.loc["retrain", "cpu_time_s"] == 9.5 and rows.loc["retrain", "cpu_s"] == 12.0 and rows.loc["retrain", "startup_s"] == 4.25
    assert rows.loc["prepare_data", "wall_s"] == 5.5 and rows.loc["prepare_data", "wall_source"] == "job log"
    assert rows.loc["retrain", "dynamo_jobs"] == 1 and rows.loc["(jobs)", "dynamo_jobs"] == 1  # prepare_data's line has no dynamo=
    assert rows.loc["(jobs)", "cpu_s"] == 16.0 and rows.loc["(jobs)", "startup_mean_s"] == pytest.approx(3.625)
    assert rows.loc["(run)", "wall_s"] == 40.0 and rows.loc["(run)", "utilisation"] == pytest.approx(16.0 / 80.0)
    assert (table.load_mean == 2.0).all()


@pytest.mark.workflow
def test_bench_run_tiny_writes_the_table(tmp_path):
    """``python -m msif.bench.run_time --tiny``: the tiny workflow in a folder of its own, then its table."""
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "msif.bench.run_time", "--tiny", "--source", str(ROOT), "--out", str(out), "--cores", "2"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = pd.read_csv(out / "run_time.csv")
    assert list(table.columns) == run_time.COLUMNS and set(table.config) == {"tiny"}
    rows = table.set_index("rule")
    assert {"pretrain", "retrain", "noise_floor", "lds_retrain", "compare", "report", "(jobs)", "(run)"} <= set(rows.index)
    assert rows.loc["retrain", "jobs"] == rows.loc["noise_floor", "jobs"] == rows.loc["lds_retrain", "jobs"] == 2  # one per scenario
    jobs = rows.drop(index=["(jobs)", "(run)", "all"], errors="ignore")
    assert (jobs.startup_s > 0).all() and (jobs.cpu_s > 0).all(), jobs  # every job logged its start-up and its CPU time
    assert 0 < rows.loc["(run)", "utilisation"] <= 1.05 and rows.loc["(run)", "wall_s"] > 0
    assert (out / "run_time.json").exists() and (out / "run_time" / "tiny" / "results" / "tiny" / "report.html").exists()

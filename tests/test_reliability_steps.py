"""Faults injected into the steps, in-process: numerical failures, unsafe or mismatched artifacts,
interrupted writes. Each is detected, named in the log and in the sidecar, and flagged on the table
rows it affects — never dropped, never silent. Plus determinism: a second run is identical bit for bit.
"""

from __future__ import annotations

import ast
import copy
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import inprocess
import msif
from conftest import ROOT
from msif import io
from msif.report import page as report
from msif.steps import common as common_steps
from msif.steps import influence as influence_steps
from msif.steps import report as report_steps
from msif.steps import train as train_steps
from msif.steps import validation as validation_steps
from msif.task.training import TrainingError, minimize
from msif.validation import health

TINY = inprocess.load_config(".test/config/config.yaml")  # defaults filled in, as the workflow does


def cfg_with(**changes) -> dict:
    """The tiny config with dotted keys changed: cfg_with(**{"training.max_iter": 1})."""
    cfg = copy.deepcopy(TINY)
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


@pytest.fixture(scope="module")
def tiny_steps(tmp_path_factory) -> tuple[Path, dict]:
    """The tiny config's steps up to the scores, both scenarios, in-process (a second, independent run)."""
    root = tmp_path_factory.mktemp("inprocess")
    return root, inprocess.run_scores(TINY, root)


@pytest.fixture
def steps_copy(tiny_steps, tmp_path) -> tuple[Path, dict]:
    """A private copy of :func:`tiny_steps` to break things in."""
    root, _ = tiny_steps
    shutil.copytree(root / "results", tmp_path / "results")
    return tmp_path, inprocess.paths(tmp_path, TINY)


def meta(path) -> dict:
    return io.load_meta(path)


# ---------------------------------------------------------------------------------------------------------
# Numerical failures: detected, named in the log and the sidecar, carried downstream


def test_diverging_training_is_named_and_writes_nothing(steps_copy, caplog):
    """A negative L2 term makes the objective unbounded below: L-BFGS runs off to -inf."""
    root, p = steps_copy
    out = root / "diverged.pt"
    with pytest.raises(TrainingError, match=r"^pretrain: objective became non-finite \(-inf\) during L-BFGS: training diverged"):
        train_steps.pretrain(cfg_with(**{"pretrain.l2": -10.0}), str(p["data"]), str(out))
    assert not out.exists() and not list(root.glob(".diverged.pt.*"))


def test_nan_gradient_stops_training_with_a_named_error():
    # sqrt(x²) has a finite value but a NaN gradient at 0
    with pytest.raises(TrainingError, match=r"gradient became non-finite \(NaN/Inf in 3 of 3 entries\)"):
        minimize(lambda x: torch.sqrt(x**2).sum(), torch.zeros(3, dtype=torch.float64))


def test_saddle_and_indefinite_hessian_are_recorded_and_too_little_damping_fails(steps_copy, caplog):
    """Training stopped after one iteration sits near the initialisation, where the Hessian is indefinite."""
    root, p = steps_copy
    cfg = cfg_with(**{"training.max_iter": 1})
    with caplog.at_level(logging.WARNING, logger="msif"):
        train_steps.pretrain(cfg, str(p["data"]), str(p["pretrain"]))
        influence_steps.pretrain_hessian(cfg, str(p["data"]), str(p["pretrain"]), str(p["hessian"]))
    problems = meta(p["hessian"])["problems"]
    assert any(x.startswith("pretrain: not converged (gradient norm") for x in problems), problems
    assert any(x.startswith("pretrain: saddle point (smallest Hessian eigenvalue -") for x in problems), problems
    assert any(x.startswith("pretrain_hessian: H + λI not positive definite") for x in problems), problems
    assert all(f"problem: {x}" in caplog.text for x in problems)
    train_steps.finetune(cfg, "fixed", str(p["data"]), str(p["pretrain"]), str(p["finetune"]("fixed")))
    damped = cfg_with(**{"training.max_iter": 1, "influence.damping": 0.2})  # too little: H's lowest eigenvalue is about -0.44
    influence_steps.finetune_ihvp(damped, "fixed", "exact", str(p["data"]), str(p["pretrain"]), str(p["finetune"]("fixed")),
                            str(p["finetune_ihvp"]("fixed", "exact")))
    lowest = meta(p["hessian"])["min_eigenvalue"]
    caplog.clear()
    with pytest.raises(ValueError, match=r"H \+ λI is not positive definite: smallest eigenvalue .*damping λ=0\.2"):
        influence_steps.pretrain_ihvp(damped, "fixed", "exact", str(p["data"]), str(p["pretrain"]), str(p["finetune"]("fixed")),
                                str(p["finetune_ihvp"]("fixed", "exact")), str(p["hessian"]), str(root / "never.pt"))
    assert "pretrain_ihvp[fixed,exact] failed: H + λI is not positive definite" in caplog.text
    assert lowest + 0.2 < 0 and not (root / "never.pt").exists()


def test_unconverged_solver_is_flagged_through_scores_into_rows_and_report(steps_copy, caplog):
    """CG stopped after 1 iteration: a bad solve, flagged in every sidecar downstream and on every row it scores;
    a retraining that diverged keeps its row (actual NaN, flagged); the report lists the flagged rows.
    (One CG per column: one iteration of block CG already spans the tiny finetuning stage and solves it.)"""
    root, p = steps_copy
    cfg = cfg_with(**{"influence.solvers": ["exact", "cg"], "influence.cg": {"tol": 1e-10, "max_iter": 1, "block": False},
                      "influence.fail_on_bad_solve": False})
    d, pt, ft = str(p["data"]), str(p["pretrain"]), str(p["finetune"]("fixed"))
    with caplog.at_level(logging.WARNING, logger="msif"):
        influence_steps.finetune_ihvp(cfg, "fixed", "cg", d, pt, ft, str(p["finetune_ihvp"]("fixed", "cg")))
        influence_steps.pretrain_ihvp(cfg, "fixed", "cg", d, pt, ft, str(p["finetune_ihvp"]("fixed", "cg")), None,
                                str(p["pretrain_ihvp"]("fixed", "cg")))
        influence_steps.scores_shard(cfg, "fixed", "cg", d, pt, str(p["pretrain_ihvp"]("fixed", "cg")), str(p["scores"]("fixed", "cg")))
    problems = meta(p["scores"]("fixed", "cg"))["problems"]
    assert problems[0].startswith("finetune_ihvp[fixed,cg]: relative residual") and "> influence.max_residual 1e-06" in problems[0]
    assert any(x.startswith("pretrain_ihvp[fixed,cg]: relative residual") for x in problems), problems
    assert "problem: finetune_ihvp[fixed,cg]: relative residual" in caplog.text
    assert meta(p["scores"]("fixed", "exact"))["problems"] == []
    with pytest.raises(RuntimeError, match=r"finetune_ihvp\[fixed,cg\]: relative residual .* > influence\.max_residual"):
        influence_steps.finetune_ihvp(cfg | {"influence": cfg["influence"] | {"fail_on_bad_solve": True}}, "fixed", "cg", d, pt, ft,
                                str(root / "never.pt"))

    # leave-k-out rows: removal sets from the exact scores, retraining faked except one set that diverges
    validation_steps.removal_sets(cfg, str(p["scores"]("fixed", "exact")), str(p["sets"]("fixed")))
    spec = io.read_json(p["sets"]("fixed"))
    spec["batches"] = [list(range(len(spec["sets"])))]
    io.write_json(p["sets"]("fixed"), spec)
    rng, calls = np.random.default_rng(0), []

    class Fake:  # retrain_both_stages: random effects; the 4th set (index 3) diverges
        def __init__(self):
            calls.append(1)
            if len(calls) == 4:
                raise TrainingError("objective became non-finite (-inf) during L-BFGS: training diverged")
            self.test_losses = torch.as_tensor(rng.normal(size=TINY["influence"]["n_test"]))
            self.pretrain = self.finetune = {"grad_norm": 1e-12}

    fake = lambda *args, **kwargs: Fake()  # noqa: E731
    mp = pytest.MonkeyPatch()
    mp.setattr(validation_steps, "retrain_both_stages", fake)
    try:
        validation_steps.retrain(cfg, "fixed", 0, d, pt, ft, str(p["sets"]("fixed")), str(p["retrain"]("fixed", 0)))
    finally:
        mp.undo()
    retrain = pd.read_csv(p["retrain"]("fixed", 0))
    assert len(retrain) == len(spec["sets"]) and retrain.loc[3, "flag"].startswith(f"retrain {spec['sets'][3]['set_id']}: diverged")
    assert np.isnan(retrain.loc[3, "actual"]) and (retrain.drop(index=3)["flag"] == "ok").all(), retrain.to_string()
    io.write_text(p["noise"]("fixed"), "scenario,rep,test_index,actual,flag\nfixed,0,0,1e-12,ok\nfixed,0,1,-1e-12,ok\n")
    cfg = cfg | {"scenarios": ["fixed"]}
    validation_steps.compare(cfg, scores_paths={"fixed": {so: str(p["scores"]("fixed", so)) for so in ("exact", "cg")}},
                      sets_paths={"fixed": str(p["sets"]("fixed"))}, retrain_paths={"fixed": [str(p["retrain"]("fixed", 0))]},
                      noise_paths={"fixed": [str(p["noise"]("fixed"))]}, leave_k_out_out=str(p["leave_k_out"]),
                      summary_out=str(p["summary"]))
    lko = pd.read_csv(p["leave_k_out"])
    assert list(lko.columns)[:7] == ["scenario", "solver", "test_id", "selection", "k", "predicted", "actual"]
    assert list(lko.columns)[-1] == "flag"
    assert len(lko) == 2 * len(spec["sets"])  # nothing dropped
    exact, cg = lko[lko.solver == "exact"].reset_index(), lko[lko.solver == "cg"].reset_index()
    assert (exact.drop(index=3)["flag"] == "ok").all() and "diverged" in exact.loc[3, "flag"]
    assert cg["flag"].str.contains(r"finetune_ihvp\[fixed,cg\]: relative residual").all()
    summary = pd.read_csv(p["summary"])
    assert np.isfinite(summary.pearson).all()  # the diverged row is kept in the table, left out of the correlations
    html_path = root / "report.html"
    run = root / "results" / TINY["run"]  # one seed: the run's tables are that seed's
    validation_steps.aggregate([TINY["seed"]], 10, [str(p["leave_k_out"])], [str(p["summary"])], [],
                        *(str(run / f"validation/{t}.csv") for t in ("leave_k_out", "summary", "lds")))
    report_steps.report({"run": TINY["run"], "seeds": [TINY["seed"]], "experiment": "digits", "scenarios": ["fixed"],
                         "report": {"example_tests": 0, "top": 1}, "validation": {"reference_solver": "exact"}}, ["exact", "cg"],
                        *(str(run / f"validation/{t}.csv") for t in ("summary", "leave_k_out", "lds")), None, str(p["data"]),
                        str(p["pretrain"]), [str(p["finetune"]("fixed"))], [str(p["scores"]("fixed", "exact"))],
                        [str(p["finetune_ihvp"]("fixed", so)) for so in ("exact", "cg")],
                        [str(p["pretrain_ihvp"]("fixed", so)) for so in ("exact", "cg")], [], str(html_path))
    html = html_path.read_text()
    assert f"{len(spec['sets']) + 1} of {len(lko)} leave-k-out rows are flagged" in html
    assert "diverged" in html and "finetune_ihvp[fixed,cg]: relative residual" in html
    flags = report.flagged_rows(lko)  # one table row per kind of flag, with its number of rows: cg's rows share one
    # flag but the diverged retraining's, so 2 table rows (not one per leave-k-out row), the first counting the rest
    assert flags.count("finetune_ihvp[fixed,cg]: relative residual") == 2, flags
    assert f"<td class='l'>{len(spec['sets']) - 1}</td>" in flags, flags


def test_non_finite_scores_name_the_pretraining_examples(steps_copy):
    root, p = steps_copy
    art = io.load_tensors(p["pretrain_ihvp"]("fixed", "exact"))
    art["s"][:] = float("nan")
    io.save_tensors(p["pretrain_ihvp"]("fixed", "exact"), art, args=meta(p["pretrain_ihvp"]("fixed", "exact"))["args"])
    ids = io.load_tensors(p["data"])["pretrain.ids"][:20].tolist()
    with pytest.raises(RuntimeError, match=rf"scores\[fixed,exact\]: non-finite values for pretraining example ids \[{ids[0]}, {ids[1]},"):
        influence_steps.scores_shard(TINY, "fixed", "exact", str(p["data"]), str(p["pretrain"]), str(p["pretrain_ihvp"]("fixed", "exact")),
                         str(root / "never.pt"))


def test_retraining_that_stops_short_is_flagged():
    ok = {"grad_norm": 1e-12}
    assert health.retrain_problems("t0-top-k2", ok, ok, 1e-9) == []
    assert health.retrain_problems("t0-top-k2", ok, {"grad_norm": 1e-3}, 1e-9) == [
        "retrain t0-top-k2: finetuning not converged (gradient norm 1.00e-03 > 100 x grad_tol 1e-09)"]
    assert health.retrain_problems("t0-top-k2", {"grad_norm": float("nan")}, ok, 1e-9)[0].startswith("retrain t0-top-k2: pretraining")


# ---------------------------------------------------------------------------------------------------------
# Safe loading


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_load_refuses_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(2), "payload": Exploit()}, path)
    io.write_json(io.sidecar(path), {"args": {}, "sha256": io._sha256(path)})  # even a matching sidecar does not help
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        io.load_tensors(path)
    assert not (tmp_path / "PWNED").exists()


def test_sidecars_record_args_version_shapes_checksum_and_convention(tiny_steps):
    _, p = tiny_steps
    m = meta(p["scores"]("fixed", "exact"))
    assert m["msif_version"] == msif.__version__ and m["convention"] == msif.SCORE_CONVENTION
    assert m["shapes"] == {"scores": [2, 60], "test_ids": [2], "pretrain_ids": [60]} and len(m["sha256"]) == 64
    assert m["args"]["solver"] == "exact" and m["args"]["pretrain"] == TINY["pretrain"] and m["problems"] == []
    assert {"msif_version", "args", "shapes", "dtypes", "sha256", "sizes"} <= set(meta(p["data"]))
    for path in (p["pretrain"], p["finetune"]("updated"), p["finetune_ihvp"]("updated", "exact"), p["hessian"]):
        assert {"msif_version", "args", "shapes", "dtypes", "sha256", "problems"} <= set(meta(path)), path


def test_artifact_of_other_arguments_is_refused(steps_copy):
    root, p = steps_copy
    with pytest.raises(io.ArtifactMismatch, match=r"pretrain\.pt was computed under other arguments \(pretrain: on disk \{'l2': 0\.05, "
                                                  r"'objective': 'classify'\}, expected \{'l2': 0\.1, 'objective': 'classify'\}\); "
                                                  r"recompute it"):
        train_steps.finetune(cfg_with(**{"pretrain.l2": 0.1}), "fixed", str(p["data"]), str(p["pretrain"]), str(root / "never.pt"))
    with pytest.raises(io.ArtifactMismatch, match=r"splits\.pt was computed under other arguments \(seed: on disk 0, expected 1\)"):
        train_steps.pretrain(cfg_with(seed=1), str(p["data"]), str(root / "never.pt"))
    shutil.copy(p["finetune_ihvp"]("updated", "exact"), root / "other.pt")
    shutil.copy(io.sidecar(p["finetune_ihvp"]("updated", "exact")), io.sidecar(root / "other.pt"))
    with pytest.raises(io.ArtifactMismatch, match=r"scenario: on disk 'updated', expected 'fixed'"):
        influence_steps.pretrain_ihvp(TINY, "fixed", "exact", str(p["data"]), str(p["pretrain"]), str(p["finetune"]("fixed")),
                                str(root / "other.pt"), str(p["hessian"]), str(root / "never.pt"))
    assert not (root / "never.pt").exists()


def test_tensor_file_not_matching_its_sidecar_is_refused(steps_copy):
    _, p = steps_copy
    shutil.copy(p["scores"]("updated", "exact"), p["scores"]("fixed", "exact"))  # new .pt, old sidecar (a half-done write)
    with pytest.raises(io.ArtifactMismatch, match=r"scores\.pt: its content does not match its sidecar .*SHA-256 differs"):
        io.load_tensors(p["scores"]("fixed", "exact"))
    io.sidecar(p["finetune"]("fixed")).unlink()
    with pytest.raises(io.ArtifactMismatch, match=r"finetune_fixed\.pt: its sidecar .* is missing"):
        io.load_tensors(p["finetune"]("fixed"))
    m = meta(p["pretrain"])
    torch.save({"params": torch.zeros(3, dtype=torch.float64)}, p["pretrain"])
    io.write_json(io.sidecar(p["pretrain"]), {k: v for k, v in m.items() if k != "sha256"})  # an old sidecar without a checksum
    with pytest.raises(io.ArtifactMismatch, match=r"tensors \{'params': \[3\]\} but its sidecar records \{'params': \[\d+\]\}"):
        io.load_tensors(p["pretrain"])


# Loads in msif.steps that cannot check arguments: the caller's config holds no key the artifact was computed under.
LOADS_WITHOUT_ARGS = {
    "method_scores": "compare gets only seed and validation keys; the scores' sidecar problems are read instead",
    "load_scores": "text: TracIn scores read by case_deletion_sets, whose params hold only seed and tracin.ks",
    "case_deletion_retrain": "text: its params are the SGD run's, not the tracin_scores job's",
    "lds_subsets": "only the pretraining set size is read (could pass {'seed': ...})",
}


def test_every_load_in_steps_checks_arguments():
    unchecked = []
    functions = [n for path in sorted((ROOT / "src/msif/steps").glob("*.py")) for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.FunctionDef)]
    assert len(functions) > 20, "the steps modules were not found"
    for fn in functions:
        for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
            f = call.func
            if isinstance(f, ast.Attribute) and f.attr == "load_tensors" and len(call.args) < 2 and not any(
                    k.arg == "expect_args" for k in call.keywords):
                unchecked.append(f"{fn.name}:{call.lineno}")
    assert {u.split(":")[0] for u in unchecked} <= set(LOADS_WITHOUT_ARGS), unchecked


# ---------------------------------------------------------------------------------------------------------
# Atomic writes


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    path = tmp_path / "table.csv"
    io.write_text(path, "old\n")

    def half_write(tmp):
        Path(tmp).write_text("half")
        raise KeyboardInterrupt  # e.g. SIGINT in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(path, half_write)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_temporary_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    (tmp_path / ".scores.pt.k1ll3d_x.tmp").write_bytes(b"partial")  # SIGKILL between mkstemp and os.replace
    (tmp_path / ".scores.pt.json.abcd1234.tmp").write_bytes(b"{")  # the sidecar's: not this path's, kept
    io.atomic_write(tmp_path / "scores.pt", lambda tmp: torch.save({"x": torch.ones(2)}, tmp))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scores.pt.json.abcd1234.tmp", "scores.pt"]
    io.write_text(tmp_path / "scores.pt.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.pt", "scores.pt.json"]


WRITE_CALLS = {"save", "write_text", "write_bytes", "to_csv", "to_parquet", "dump", "savefig", "to_html", "to_json", "imwrite"}
# Modules that are not part of the workflow (their files are not workflow outputs), with the reason.
NOT_WORKFLOW = {"bench": "the benchmark CLIs (make bench, bench-scale, bench-peers) write their own tables"}


def test_only_msif_io_writes_files():
    """No module of the workflow but msif.io writes a file directly (all go through msif.io.atomic_write).

    Flags ``open(..., 'w'/'a'/'x')`` and calls such as ``torch.save(obj, path)``, ``df.to_csv(path)``,
    ``json.dump(obj, f)``, ``fig.savefig(path)`` with a file argument; ``to_csv(index=False)`` (a string)
    and ``savefig(buf)`` into an in-memory buffer named ``buf`` are not writes.
    """
    offenders = []
    paths = sorted((ROOT / "src/msif").rglob("*.py"))
    assert len(paths) > 30, "the package's modules were not found"
    for path in paths:
        if path.name == "io.py" or path.relative_to(ROOT / "src/msif").parts[0] in NOT_WORKFLOW:
            continue
        for call in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)):
            f = call.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "io":
                continue  # msif.io's own (atomic) writers
            if name == "open":
                mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
                if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                    offenders.append(f"{path.name}:{call.lineno} open(..., {mode.value!r})")
            elif name in WRITE_CALLS:
                target = call.args[1] if name in {"save", "dump"} and len(call.args) > 1 else (call.args[0] if call.args else None)
                target = target or next((k.value for k in call.keywords if k.arg in {"path", "path_or_buf", "f", "fname"}), None)
                if name in {"write_text", "write_bytes"} or (target is not None and not (isinstance(target, ast.Name) and target.id == "buf")):
                    offenders.append(f"{path.name}:{call.lineno} {name}")
    assert not offenders, offenders


def test_every_file_a_step_writes_goes_through_atomic_write(tiny_steps, tmp_path):
    """Spy on msif.io.atomic_write while the steps of the validation run; every file they leave is one it wrote."""
    root, _ = tiny_steps
    shutil.copytree(root / "results", tmp_path / "results")
    before = {p for p in (tmp_path / "results").rglob("*") if p.is_file()}
    written: set[Path] = set()
    real = io.atomic_write
    mp = pytest.MonkeyPatch()
    mp.setattr(io, "atomic_write", lambda path, write: (written.add(Path(path).resolve()), real(path, write))[1])
    try:
        p = inprocess.run_validation(TINY, tmp_path, scenarios=["fixed"], set_ids=["t0-top-k2"])
        inprocess.run_scores(cfg_with(**{"influence.solvers": ["cg"]}), tmp_path, scenarios=["fixed"])
    finally:
        mp.undo()
    new = {p.resolve() for p in (tmp_path / "results").rglob("*") if p.is_file()} - {p.resolve() for p in before}
    assert new and new <= written, sorted(map(str, new - written))
    assert p["retrain"]("fixed", 0).resolve() in written


# ---------------------------------------------------------------------------------------------------------
# Determinism: the same config and seed give the same bits; another seed gives other results


@pytest.mark.workflow
def test_second_run_is_bitwise_identical_to_the_workflow_run(tiny_steps, tiny_run, tmp_path):
    """Every tensor the in-process run computed equals the Snakemake run's bit for bit, and so do two retrainings."""
    root, p = tiny_steps
    wf = inprocess.paths(tiny_run, TINY)
    files = [p["data"], p["pretrain"], p["hessian"]] + [f(s) for s in TINY["scenarios"] for f in (p["finetune"],)] + [
        f(s, "exact") for s in TINY["scenarios"] for f in (p["finetune_ihvp"], p["pretrain_ihvp"], p["scores"])]
    for mine in files:
        a, b = io.load_tensors(mine), io.load_tensors(tiny_run / mine.relative_to(root))
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{mine.name}[{k}] differs"
    shutil.copytree(p["data"].parents[1], tmp_path / "results" / TINY["run"] / f"seed{TINY['seed']}")
    q = inprocess.run_validation(TINY, tmp_path, scenarios=["updated"], set_ids=["t1-top-k5", "t0-random-k2"])
    mine = pd.read_csv(q["retrain"]("updated", 0)).set_index("set_id")["actual"]
    theirs = pd.concat(pd.read_csv(f) for f in sorted(wf["retrain"]("updated", 0).parent.glob("*.csv"))).set_index("set_id")["actual"]
    assert len(mine) == 2 and (mine == theirs.loc[mine.index]).all(), (mine, theirs.loc[mine.index])
    assert io.read_json(q["sets"]("updated"))["sets"] == io.read_json(wf["sets"]("updated"))["sets"]


def test_another_seed_changes_scores_and_removal_sets(tiny_steps, tmp_path):
    _, p = tiny_steps
    q = inprocess.run_scores(cfg_with(seed=1), tmp_path, scenarios=["fixed"])
    a, b = io.load_tensors(p["scores"]("fixed", "exact")), io.load_tensors(q["scores"]("fixed", "exact"))
    assert not torch.equal(a["pretrain_ids"], b["pretrain_ids"]) and not torch.equal(a["scores"], b["scores"])
    validation_steps.removal_sets(TINY, str(p["scores"]("fixed", "exact")), str(tmp_path / "sets0.json"))
    validation_steps.removal_sets(cfg_with(seed=1), str(q["scores"]("fixed", "exact")), str(tmp_path / "sets1.json"))
    members = [[s["members"] for s in io.read_json(tmp_path / f"sets{i}.json")["sets"]] for i in (0, 1)]
    assert members[0] != members[1]
    with pytest.raises(io.ArtifactMismatch, match=r"seed: on disk 0, expected 1"):  # seed-0 scores, seed-1 removal sets
        validation_steps.removal_sets(cfg_with(seed=1), str(p["scores"]("fixed", "exact")), str(tmp_path / "never.json"))


# ---------------------------------------------------------------------------------------------------------
# The cold-start noise floor (another seed's initialisation)


def test_training_from_scratch_reproduces_the_run_from_its_own_seed_and_the_seed_noise_is_recorded(tiny_steps, tmp_path):
    """From the run's own initialisation, training both stages from scratch lands on the run's test losses; the
    'seed' noise job starts from another seed and records the change with its kind."""
    from msif.validation.retraining import retrain_from_scratch, test_losses

    _, p = tiny_steps
    exp, pt, _, ft, ft_params = common_steps.load_stages(TINY, "updated", str(p["data"]), str(p["pretrain"]), str(p["finetune"]("updated")))
    base = test_losses(ft, ft_params, exp.test)
    own = retrain_from_scratch(pt, ft, exp.init_params(), exp.test, 1e-10, 10_000)
    assert torch.allclose(own.test_losses, base, rtol=0, atol=1e-8), (own.test_losses - base).abs().max()
    out = tmp_path / "seed0.csv"
    validation_steps.noise_floor(TINY, "updated", str(p["data"]), str(p["pretrain"]), str(p["finetune"]("updated")), str(out), reps=[("seed", 0)])
    rows = pd.read_csv(out)
    assert set(rows.kind) == {"seed"} and len(rows) == TINY["influence"]["n_test"] and np.isfinite(rows.actual).all()
    assert validation_steps.noise_seed(0, "seed", "updated", 0) not in {0, validation_steps.noise_seed(0, "warm", "updated", 0), validation_steps.noise_seed(0, "seed", "fixed", 0)}
    with pytest.raises(ValueError, match=r"noise kind 'cold': allowed \['warm', 'seed'\]"):
        validation_steps.noise_floor(TINY, "updated", str(p["data"]), str(p["pretrain"]), str(p["finetune"]("updated")), str(out), reps=[("cold", 0)])


def test_a_diverged_lds_retraining_keeps_its_rows_flagged_and_the_job_finishes(tiny_steps, tmp_path):
    _, p = tiny_steps
    subsets = tmp_path / "lds_subsets.json"
    validation_steps.lds_subsets(TINY, str(p["data"]), str(subsets))
    n_test, calls = TINY["influence"]["n_test"], []

    class Fake:  # the second subset diverges
        def __init__(self):
            calls.append(1)
            if len(calls) == 2:
                raise TrainingError("objective became non-finite (nan) during L-BFGS: training diverged")
            self.test_losses = torch.zeros(n_test, dtype=torch.float64)
            self.pretrain = self.finetune = {"grad_norm": 1e-12}

    out = tmp_path / "batch0.csv"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(validation_steps, "retrain_both_stages", lambda *a, **k: Fake())
        validation_steps.lds_retrain(TINY, "fixed", 0, str(p["data"]), str(p["pretrain"]), str(p["finetune"]("fixed")), str(subsets), str(out))
    rows = pd.read_csv(out)
    j = io.read_json(subsets)["batches"][0][1]
    bad = rows[rows.subset_id == j]
    assert len(bad) == n_test and bad.actual.isna().all() and bad.flag.str.startswith(f"lds subset {j}: diverged").all()
    assert rows[rows.subset_id != j].actual.notna().all() and len(rows) == n_test * len(io.read_json(subsets)["batches"][0])

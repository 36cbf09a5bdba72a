"""``python -m msif.bench.tradeoff`` (``make bench-tradeoff``): the smoke sweep's table, its per-point cache (a rerun
recomputes nothing, a changed point is recomputed) and the checks of the settings file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from msif.bench import tradeoff
from msif.report import benchmarks

SETTINGS = ROOT / "config/bench/tradeoff.yaml"


def smoke_settings(tmp_path, **points) -> str:
    """A copy of the settings file whose smoke points are ``points`` (name -> overrides), base made absolute."""
    raw = yaml.safe_load(SETTINGS.read_text())
    raw["smoke"]["base"] = str(ROOT / raw["smoke"]["base"])
    raw["points"].update(points)
    raw["smoke"]["points"] = list(points)
    path = tmp_path / "tradeoff.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def sidecar(out) -> dict:
    return json.loads((out / "tradeoff.json").read_text())


def cached_files(out) -> dict:
    return {p: p.stat().st_mtime_ns for p in (out / "tradeoff/smoke").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tradeoff")
    config = smoke_settings(tmp, default={}, **{"damping-1e-2": {"influence": {"damping": 1.0e-2}}})
    out = tmp / "bench"
    return config, out, tradeoff.main(["--smoke", "--config", config, "--out", str(out)])


def test_smoke_writes_the_table_with_real_numbers(smoke):
    _, out, df = smoke
    table = pd.read_csv(out / "tradeoff.csv")
    assert table.columns.tolist() == tradeoff.COLUMNS
    pd.testing.assert_frame_equal(table.fillna({"shared_from": ""}), df, check_dtype=False)  # the CSV is the table main returns
    assert list(zip(table.point, table.scenario, strict=True)) == [("default", "fixed"), ("default", "updated"),
                                                                   ("damping-1e-2", "fixed"), ("damping-1e-2", "updated")]
    assert table.default.tolist() == [True, True, False, False]
    assert table.overrides.tolist()[::2] == ["(base config)", "influence.damping=0.01"]
    for col in ("pt_test_accuracy", "ft_test_accuracy"):
        assert table[col].between(0, 1).all()
    assert (table.pt_test_accuracy > 0.6).all()  # above chance on the tiny config's two digit classes
    assert np.isfinite(table[["pearson", "slope", "lds_warm"]].to_numpy()).all()
    assert (table.pearson > 0.5).all() and (table.pearson <= 1).all() and (table.slope > 0).all()
    assert (table.n_sets == 2 * 2 * 3).all() and (table.n_subsets == 8).all()
    assert (table.seconds > 0).all() and (table.cpu_seconds > 0).all()
    # damping changes the scores only: the damping point copies default's models and LDS retrains, and predicts otherwise
    assert table.shared_from.fillna("").tolist() == ["", "", "default", "default"]
    folder = out / "tradeoff/smoke"
    assert (folder / "damping-1e-2/seed0/train/pretrain.pt").read_bytes() == (folder / "default/seed0/train/pretrain.pt").read_bytes()
    d, dd = table[table.point == "default"], table[table.point == "damping-1e-2"]
    np.testing.assert_array_equal(d.ft_test_accuracy.to_numpy(), dd.ft_test_accuracy.to_numpy())
    assert not np.allclose(d.slope.to_numpy(), dd.slope.to_numpy())
    assert sidecar(out)["recomputed"] == ["default/seed0", "damping-1e-2/seed0"]
    assert (out / "tradeoff.png").stat().st_size > 10_000


def test_a_rerun_recomputes_nothing(smoke):
    config, out, df = smoke
    before = cached_files(out)
    again = tradeoff.main(["--smoke", "--config", config, "--out", str(out)])
    assert sidecar(out)["recomputed"] == []
    assert cached_files(out) == before  # not one cached file rewritten
    pd.testing.assert_frame_equal(again, df)


def test_a_changed_point_is_recomputed_alone(smoke, tmp_path):
    _, out, df = smoke
    copy = tmp_path / "bench"
    shutil.copytree(out, copy)
    before = cached_files(copy)
    config = smoke_settings(tmp_path, default={}, **{"damping-1e-2": {"influence": {"damping": 3.0e-2}}})
    again = tradeoff.main(["--smoke", "--config", config, "--out", str(copy)])
    assert sidecar(copy)["recomputed"] == ["damping-1e-2/seed0"]
    after = cached_files(copy)
    default = [p for p in before if "/default/" in str(p)]
    assert default and all(after[p] == before[p] for p in default)
    point = copy / "tradeoff/smoke/damping-1e-2/seed0"
    for p in ("result.json", "influence/fixed/scores.pt", "validation/updated/removal_sets.json", "validation/updated/retrain0.csv"):
        assert after[point / p] != before[point / p], p  # rewritten (its models and LDS retrains are copied from default)
    pd.testing.assert_frame_equal(again[again.point == "default"], df[df.point == "default"])
    assert not np.allclose(again.slope[again.point != "default"], df.slope[df.point != "default"])


def test_a_shared_point_measures_what_it_would_alone(smoke, tmp_path):
    """The damping point without default before it trains its own models and retrains its own LDS subsets: the same numbers."""
    config, _, df = smoke
    alone = tradeoff.main(["--smoke", "--config", config, "--out", str(tmp_path), "--points", "damping-1e-2"])
    assert alone.shared_from.tolist() == ["", ""]
    cols = ["pt_test_accuracy", "ft_test_accuracy", "pearson", "slope", "lds_warm"]
    np.testing.assert_allclose(alone[cols].to_numpy(), df[df.point == "damping-1e-2"][cols].to_numpy(), rtol=1e-9)


@pytest.mark.parametrize("smoke, edit, message", [
    (False, lambda raw: raw.update(sweep=1), r"unknown keys \['sweep'\]"),
    (False, lambda raw: raw["measure"].pop("n_subsets"), "measure needs exactly the keys"),
    (False, lambda raw: raw["points"].update(bad={"pretrain": {"l2": -1}}), "point bad: config key pretrain.l2"),
    (False, lambda raw: raw["points"].update(bad={"pretrain": {"l3": 1}}), "point bad: config key pretrain: Additional properties"),
    (False, lambda raw: raw["points"].update({"a/b": {}}), "point name 'a/b'"),
    (False, lambda raw: raw.update(seeds=[]), "seeds must be a non-empty list"),
    (True, lambda raw: raw["smoke"].update(points=["nope"]), r"smoke.points names \['nope'\]"),
    (True, lambda raw: raw["smoke"]["measure"].update(ks=[2, 500]), "k=500 exceeds"),
])
def test_a_bad_settings_file_is_refused(tmp_path, smoke, edit, message):
    raw = yaml.safe_load(SETTINGS.read_text())
    raw["base"], raw["smoke"]["base"] = str(ROOT / raw["base"]), str(ROOT / raw["smoke"]["base"])
    edit(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message):
        tradeoff.load_settings(str(path), smoke=smoke)


def test_the_shipped_settings_load_and_hold_the_default():
    settings = tradeoff.load_settings(str(SETTINGS))
    assert settings["points"]["default"] == {} and len(settings["points"]) >= 6
    base = tradeoff.point_config(settings, {})
    assert base["influence"]["damping"] == 0.0 and base["influence"]["solvers"] == ["exact"]
    key = tradeoff.cache_key({**base, "seed": 0})
    assert key == tradeoff.cache_key({**base, "seed": 0, "run": "another name"})
    damped = {**tradeoff.point_config(settings, {"influence": {"damping": 1e-3}}), "seed": 0}
    assert key != tradeoff.cache_key(damped)
    # damping alone shares the trained models and LDS retrains; anything else that differs does not
    assert tradeoff.share_key({**base, "seed": 0}) == tradeoff.share_key(damped)
    for other in ({"pretrain": {"l2": 1e-3}}, {"finetune": {"alpha": 0.2}}, {"validation": {"lds": {"fraction": 0.4}}}):
        assert tradeoff.share_key({**tradeoff.point_config(settings, other), "seed": 0}) != tradeoff.share_key(damped), other
    assert tradeoff.share_key({**base, "seed": 0}) != tradeoff.share_key({**base, "seed": 1})


def test_make_docs_shows_the_table_and_the_figure(smoke, tmp_path):
    _, out, _ = smoke
    page = tmp_path / "docs/benchmarks.md"
    benchmarks.main(["--results", str(out), "--out", str(page), "--repo", str(ROOT)])
    text = page.read_text()
    source = next(s for s in benchmarks.SOURCES if s.path == "tradeoff.csv")
    section = text.split(f"## {source.title}", 1)[1].split("\n## ", 1)[0]
    assert "by `make bench-tradeoff`" in section and "Settings (tradeoff.json): " in section
    assert "| point | overrides | scenario | seed | default |" in section and "| default | (base config) | fixed | 0 | True |" in section
    assert "![" in section and "(figures/tradeoff.png)" in section
    assert (tmp_path / "docs/figures/tradeoff.png").read_bytes() == (out / "tradeoff.png").read_bytes()

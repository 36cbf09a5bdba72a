"""Steps of ``workflow/rules/report.smk``: rule X runs ``workflow/scripts/X.py``, which calls ``X`` here."""

from __future__ import annotations

import itertools

from msif.report.page import ReportInputs, write_report
from msif.report.tables import write_tables


def report(config: dict, solvers: list[str], summary: str, leave_k_out: str, lds: str, table: str, data: str, pretrain: str,
           finetune: list[str], scores: list[str], finetune_ihvp: list[str], pretrain_ihvp: list[str], tracin: list[str],
           out: str, group: list[str] | None = None, seeds: list[int] | None = None) -> None:
    """The HTML report from the files the rule names (lists in ``expand`` order: scenario-major, then solver; ``group``:
    rule group_predictions' sidecars, scenario-major, then ``seeds``)."""
    scenarios = config["scenarios"]
    pairs = list(itertools.product(scenarios, solvers))
    solves = {f"{step}[{s},{so}]": path for step, paths in (("finetune_ihvp", finetune_ihvp), ("pretrain_ihvp", pretrain_ihvp))
              for (s, so), path in zip(pairs, paths, strict=True)}
    inputs = ReportInputs(
        summary=summary, leave_k_out=leave_k_out, lds=lds, table_md=table, data=data, pretrain=pretrain,
        finetune=dict(zip(scenarios, finetune, strict=True)), scores=dict(zip(scenarios, scores, strict=True)), solves=solves,
        tracin=dict(zip(("scores", "train", "summary"), tracin, strict=True)) if tracin else None,
        group=[(s, str(seed), path) for (s, seed), path in zip(itertools.product(scenarios, seeds or []), group, strict=True)]
        if group else None)
    write_report(config, inputs, out)


def tables(summary: str, alpha: float, csv_out: str, md_out: str) -> None:
    """``tables/summary.csv`` and ``tables/paper_table.md`` from the pooled validation summary."""
    write_tables(summary, alpha, csv_out, md_out)

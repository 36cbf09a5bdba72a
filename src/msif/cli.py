"""The ``msif`` command: the common things that are not the whole DAG.

    msif info [--config FILE]             versions, device, and a summary of a config
    msif validate-config FILE             schema + cross-key checks, as the workflow does at start
    msif show-top RUN TEST_ID [options]   top proponents / opponents of a test example of a finished run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import msif
from msif import io
from msif.config import load_config, schema_markdown, validate_config


def cmd_schema_docs(args) -> int:
    print(schema_markdown(), end="")
    return 0


def cmd_info(args) -> int:
    import torch

    print(f"msif {msif.__version__} | torch {torch.__version__} | Python {platform.python_version()} | {platform.platform()}")
    print(f"CUDA available: {torch.cuda.is_available()}" + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    print(f"score convention: {msif.SCORE_CONVENTION}")
    if args.config:
        c = load_config(args.config)
        print(f"config {args.config}: run={c.get('run')} experiment={c.get('experiment')} scenarios={c.get('scenarios')} "
              f"solvers={c.get('influence', {}).get('solvers')} ks={c.get('validation', {}).get('ks')}")
    return 0


def cmd_validate(args) -> int:
    try:
        validate_config(load_config(args.file))
    except ValueError as err:
        print(f"{args.file}: INVALID: {err}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid")
    return 0


def finetuned_accuracy(seed_dir: Path, scenario: str) -> dict:
    """``{"train": ..., "test": ...}`` of a scenario's finetuned model (its sidecar), empty when not recorded."""
    path = seed_dir / "train" / f"finetune_{scenario}.pt"
    return io.load_meta(path).get("accuracy", {}) if io.sidecar(path).exists() else {}


def cmd_show_top(args) -> int:
    seed_dir = Path(args.results) / args.run / f"seed{args.seed}"
    path = seed_dir / "influence" / args.scenario / args.solver / "scores.pt"
    if not path.exists():
        print(f"no scores at {path}: has run {args.run!r} finished the scores step for {args.scenario}/{args.solver}?", file=sys.stderr)
        return 1
    art = io.load_tensors(path)
    test_ids = art["test_ids"].tolist()
    if args.test_id not in test_ids:
        print(f"test id {args.test_id} is not among the scored test examples {test_ids}", file=sys.stderr)
        return 1
    t = test_ids.index(args.test_id)
    scores, ids = art["scores"][t], art["pretrain_ids"]
    order = scores.argsort(descending=True)
    rows = {"proponents": order[: args.k].tolist(), "opponents": order.flip(0)[: args.k].tolist()}
    acc = finetuned_accuracy(seed_dir, args.scenario)
    if args.json:
        print(json.dumps({"finetune_accuracy": acc} | {kind: [{"pretrain_id": int(ids[i]), "score": float(scores[i])} for i in idx]
                                                         for kind, idx in rows.items()}))
        return 0
    print(f"run {args.run}, {args.scenario}/{args.solver}, test id {args.test_id} — score = predicted Δ test loss if removed")
    if acc:
        print(f"  the finetuned model explained: accuracy train {acc['train']:.3f}, test {acc['test']:.3f}")
    for kind, idx in rows.items():
        print(f"  top {args.k} {kind}:")
        for rank, i in enumerate(idx, 1):
            print(f"    {rank:3d}. pretrain id {int(ids[i]):6d}   score {float(scores[i]):+.4e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msif", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, device, config summary")
    p.add_argument("--config", help="a config file to summarise")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("validate-config", help="check a config file as the workflow does at start")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("schema-docs", help="print the config keys table (config/README.md)")
    p.set_defaults(func=cmd_schema_docs)
    p = sub.add_parser("show-top", help="top proponents and opponents of a test example")
    p.add_argument("run")
    p.add_argument("test_id", type=int, help="the test example's id (its row in the source data set)")
    p.add_argument("--scenario", default="fixed", help="fixed, updated or updated@<alpha> (default: fixed)")
    p.add_argument("--solver", default="exact")
    p.add_argument("--seed", type=int, default=0, help="which seed's scores (default: 0)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show_top)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

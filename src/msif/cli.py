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
from msif.config import check_config

SCHEMA = Path(__file__).resolve().parents[2] / "workflow/schemas/config.schema.yaml"


def _load_config(path: str) -> dict:
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise SystemExit(f"{path}: not a YAML mapping")
    return config


def _with_defaults(validator_class):
    """A validator that fills in each property's ``default`` first (as Snakemake's ``validate`` does)."""
    import jsonschema

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = json.loads(json.dumps(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict, schema_path: Path = SCHEMA) -> dict:
    """Validate like the workflow: JSON schema (defaults filled in) then :func:`msif.config.check_config`."""
    import jsonschema
    import yaml


    schema = yaml.safe_load(schema_path.read_text())
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.path) or "<top level>"
        raise ValueError(f"config key {key}: {e.message}")
    check_config(config)
    return config


def schema_markdown(schema_path: Path = SCHEMA) -> str:
    """config/README.md: one row per config key (dotted path), from the schema's descriptions and defaults."""
    import yaml

    schema = yaml.safe_load(schema_path.read_text())
    rows = []
    required_by: dict[str, list[str]] = {}  # "data.n_pretrain" -> the experiments whose branch requires it
    for branch in schema.get("allOf", []):
        exp = branch["if"]["properties"]["experiment"]
        names = exp.get("enum", [exp.get("const")])
        for block, sub in branch.get("then", {}).get("properties", {}).items():
            for key in sub.get("required", []):
                required_by.setdefault(f"{block}.{key}", []).extend(names)

    def walk(node: dict, path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            key = f"{path}.{name}" if path else name
            kind = sub.get("type", "")
            if "enum" in sub:
                kind += " (" + ", ".join(map(str, sub["enum"])) + ")"
            elif sub.get("type") == "array" and "enum" in sub.get("items", {}):
                kind += " of (" + ", ".join(map(str, sub["items"]["enum"])) + ")"
            default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
            if not default and key in required_by:  # experiment-specific: no default, so none leaks into another experiment
                default = "required: " + ", ".join(required_by[key])
            desc = " ".join(str(sub.get("description", "")).split())
            rows.append(f"| `{key}` | {kind} | {default} | {desc} |")
            if sub.get("type") == "object":
                walk(sub, key)

    walk(schema, "")
    head = ("# Configuration keys\n\nGenerated from `workflow/schemas/config.schema.yaml` by `msif schema-docs` "
            "(a test keeps the two in sync). The workflow validates every config against the schema at start, then "
            "checks cross-key rules (`msif.config.check_config`); `msif validate-config FILE` does the same without running.\n\n"
            "| key | type | default | meaning |\n|---|---|---|---|\n")
    return head + "\n".join(rows) + "\n"


def cmd_schema_docs(args) -> int:
    print(schema_markdown(), end="")
    return 0


def cmd_info(args) -> int:
    import torch

    print(f"msif {msif.__version__} | torch {torch.__version__} | Python {platform.python_version()} | {platform.platform()}")
    print(f"CUDA available: {torch.cuda.is_available()}" + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    print(f"score convention: {msif.SCORE_CONVENTION}")
    if args.config:
        c = _load_config(args.config)
        print(f"config {args.config}: run={c.get('run')} experiment={c.get('experiment')} scenarios={c.get('scenarios')} "
              f"solvers={c.get('influence', {}).get('solvers')} ks={c.get('validation', {}).get('ks')}")
    return 0


def cmd_validate(args) -> int:
    try:
        validate_config(_load_config(args.file))
    except ValueError as err:
        print(f"{args.file}: INVALID: {err}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid")
    return 0


def cmd_show_top(args) -> int:

    path = Path(args.results) / args.run / f"seed{args.seed}" / "influence" / args.scenario / args.solver / "scores.pt"
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
    if args.json:
        print(json.dumps({kind: [{"pretrain_id": int(ids[i]), "score": float(scores[i])} for i in idx] for kind, idx in rows.items()}))
        return 0
    print(f"run {args.run}, {args.scenario}/{args.solver}, test id {args.test_id} — score = predicted Δ test loss if removed")
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

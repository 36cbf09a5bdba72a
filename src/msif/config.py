"""A config: read, validated against the schema shipped with the package, cross-key checks, one seed's view.

The schema (``msif/schemas/config.schema.yaml``, package data) checks each key; :func:`check_config` checks
what a JSON schema cannot express (sizes against the data, keys that must agree).
"""

from __future__ import annotations

import importlib.util
import json
import math
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from msif.errors import ConfigError
from msif.experiments.registry import BUILTIN, check_sizes

# The built-in experiments whose model is the MLP of msif.task.models.mlp_model (digits' build_model): pretrain.objective
# applies to them; text (CBOW) and fashion_mnist (a CNN) have their own pretraining objective.
MLP_EXPERIMENTS = ("digits", "fashion_classes", "mnist_classes")


def check_experiment(name: str) -> None:
    """A built-in experiment name, or ``module:function`` whose module can be found (not imported)."""
    if ":" not in name:
        if name not in BUILTIN:
            raise ConfigError(f"experiment={name!r}: allowed {list(BUILTIN)} or 'package.module:function'")
        return
    module = name.split(":", 1)[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ConfigError(f"experiment={name!r}: module {module!r} is not importable (is it installed or on PYTHONPATH?)")


def check_finite(node, path: str = "") -> None:
    """Every number in the config is finite (a JSON schema's bounds let NaN and often Inf through)."""
    if isinstance(node, dict):
        for key, value in node.items():
            check_finite(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_finite(value, f"{path}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{path}={node}: must be a finite number")


def check_config(config: dict) -> None:
    """Raise :class:`ConfigError` on the first violated cross-key rule."""
    check_finite(config)
    check_experiment(config["experiment"])
    d, v, inf = config["data"], config["validation"], config["influence"]
    overlap = sorted(set(d.get("pretrain_classes", [])) & set(d.get("finetune_classes", [])))
    if overlap and config["experiment"] != "fashion_mnist":  # fashion_mnist: classes of two data sets, overlap allowed
        raise ConfigError(f"data.finetune_classes={d['finetune_classes']}: classes {overlap} are also pretraining classes; "
                          "the two tasks must use disjoint classes")
    too_big = [k for k in v["ks"] if k > d.get("n_pretrain", float("inf"))]
    if too_big:
        raise ConfigError(f"validation.ks={v['ks']}: k={too_big[0]} exceeds data.n_pretrain={d['n_pretrain']}; "
                          f"allowed 1..{d['n_pretrain']}")
    if v["reference_solver"] not in inf["solvers"]:
        raise ConfigError(f"validation.reference_solver={v['reference_solver']!r}: allowed one of influence.solvers={inf['solvers']}")
    if inf.get("group", {}).get("enabled") and set(v["reference_solver"].split("+")) != {"exact"}:
        raise ConfigError(f"influence.group.enabled=true needs validation.reference_solver 'exact', not {v['reference_solver']!r}: "
                          "multi_stage_group preconditions its per-set Newton steps with each stage's dense factorisation; with "
                          "CG or EK-FAC each step needs many full-data curvature products per set (method.md, Group removals: "
                          "not applicable at scale)")
    if "updated" in config["scenarios"] and not config["finetune"]["alpha"] > 0:
        raise ConfigError(f"finetune.alpha={config['finetune']['alpha']}: scenario 'updated' needs alpha > 0")
    for s in config["scenarios"]:
        if s.startswith("updated@") and not float(s.partition("@")[2]) > 0:
            raise ConfigError(f"scenarios: {s!r} needs alpha > 0 (e.g. updated@0.1)")
    objective = config["pretrain"].get("objective", "classify")
    if objective != "classify" and config["experiment"] not in MLP_EXPERIMENTS:
        raise ConfigError(f"pretrain.objective={objective!r}: only the MLP experiments {list(MLP_EXPERIMENTS)} offer it; "
                          f"experiment {config['experiment']!r} allows 'classify' (its own pretraining objective)")
    r = config["report"]
    if r["example_tests"] > inf["n_test"]:
        raise ConfigError(f"report.example_tests={r['example_tests']}: exceeds influence.n_test={inf['n_test']}; "
                          f"allowed 0..{inf['n_test']}")
    if r["top"] > d.get("n_pretrain", math.inf):
        raise ConfigError(f"report.top={r['top']}: exceeds data.n_pretrain={d['n_pretrain']}; allowed 1..{d['n_pretrain']}")
    check_sizes(config)
    n_pt, shards = d.get("n_pretrain"), inf.get("shards", 1)
    if n_pt is not None and shards > -(-n_pt // inf["batch_size"]):
        raise ConfigError(f"influence.shards={shards}: the {n_pt} pretraining examples make {-(-n_pt // inf['batch_size'])} batches "
                          f"of influence.batch_size={inf['batch_size']}; allowed 1..{-(-n_pt // inf['batch_size'])}")


def for_seed(config: dict, seed: int | None = None) -> dict:
    """The config of one replicate: a workflow config (``seeds: [...]``) with ``seed`` set, as every step sees it.

    ``seed`` defaults to the first of ``seeds``; a config that already names one ``seed`` is returned as is.
    """
    if "seeds" not in config:
        if "seed" not in config:
            raise ConfigError("config: give seeds: [...] (a list of seeds)")
        return config
    seeds = config["seeds"]
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise ConfigError(f"seed={seed}: not one of seeds={seeds}")
    out = {k: v for k, v in config.items() if k != "seeds"}
    out["seed"] = int(seed)
    return out


# The schema ships inside the package (importlib.resources), so an installed wheel validates as a checkout does;
# workflow/schemas/config.schema.yaml is a link to it for Snakemake's validate().
SCHEMA = Path(str(resources.files("msif") / "schemas" / "config.schema.yaml"))


def load_config(path: str) -> dict:
    """A YAML config file as a dict (not yet validated)."""
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise SystemExit(f"{path}: not a YAML mapping")
    return config


def _with_defaults(validator_class):
    """A validator that fills in each property's ``default`` first (as Snakemake's ``validate`` does)."""

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
    head = ("# Configuration keys\n\nGenerated from `src/msif/schemas/config.schema.yaml` by `msif schema-docs` "
            "(a test keeps the two in sync). The workflow validates every config against the schema at start, then "
            "checks cross-key rules (`msif.config.check_config`); `msif validate-config FILE` does the same without running.\n\n"
            "| key | type | default | meaning |\n|---|---|---|---|\n")
    return head + "\n".join(rows) + "\n"

"""The package's shape: no import cycle inside msif, every import pointing down the layers, imports at module top.

Every ``import msif.x`` / ``from msif.x import y`` / ``from msif import x`` counts, wherever it sits (a function-level or
``TYPE_CHECKING`` import is still an arrow). A package (``msif.core``) stands for its ``__init__``.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lower layers never import higher ones; modules of one layer may import each other (without cycles).
LAYERS = [
    {"msif", "msif.errors", "msif.arguments", "msif.io", "msif.logs"},
    {"msif.core"},
    {"msif.task"},
    {"msif.experiments", "msif.config"},
    {"msif.influence"},
    {"msif.validation"},
    {"msif.report", "msif.steps", "msif.bench", "msif.cli"},
]
# Peers are optional: their imports stay inside the functions that use them (msif.bench.peers).
LAZY_OK = {"captum", "dattri", "trak", "pydvl", "kronfluence"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "msif").rglob("*.py"))}


def imports(name: str) -> list[tuple[str, int, bool]]:
    """(imported msif module, line, at module top) for every msif import of module ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    top = {id(n) for n in tree.body}
    top |= {id(c) for n in tree.body if isinstance(n, ast.If) for c in n.body}  # if TYPE_CHECKING: at top
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out += [(t, node.lineno, id(node) in top) for t in targets if t == "msif" or t.startswith("msif.")]
    return [(t if t in MODULES else t.rpartition(".")[0], line, at_top) for t, line, at_top in out]


def layer(name: str) -> int:
    for i, group in enumerate(LAYERS):
        if any(name == g or name.startswith(g + ".") for g in group if g != "msif") or (name == "msif" and "msif" in group):
            return i
    raise AssertionError(f"{name}: in no layer of tests/test_imports.py::LAYERS")


GRAPH = {m: sorted({t for t, _, _ in imports(m) if t != m}) for m in MODULES}


def test_the_modules_were_found():
    assert {"msif.core.solvers", "msif.influence.multi_stage", "msif.steps.train", "msif.report.page"} <= set(MODULES)


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, []):
            if state.get(t) == 1:
                return [*stack[stack.index(t):], t]
            if t not in state and (c := visit(t)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in graph:
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_find_cycle_finds_one():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a"]}) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    up = [f"{t} (line {line})" for t, line, _ in imports(name) if t != "msif" and layer(t) > layer(name)]
    assert not up, f"{name} (layer {layer(name)}) imports a higher layer: {up}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_msif_imports_sit_at_module_top(name):
    inner = [f"{t} (line {line})" for t, line, at_top in imports(name) if not at_top and t != "msif"]
    assert not inner, f"{name}: msif imports inside functions: {inner}"


def test_the_wheel_carries_the_schema_and_the_library_reads_no_repository_file(tmp_path):
    """An installed wheel validates configs: the schema is package data, found through importlib.resources."""
    import shutil
    import subprocess
    import sys
    import zipfile

    tree = tmp_path / "tree"  # built from a copy: a build in the checkout would leave build/ behind
    shutil.copytree(SRC, tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(SRC.parent / name, tree / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(tree)], check=True)
    (wheel,) = tmp_path.glob("msif-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "msif/schemas/config.schema.yaml" in names and "msif/steps/train.py" in names
    repo_paths = [f"{m} reads the repository tree" for m, p in MODULES.items() if "parents[" in p.read_text()]
    assert not repo_paths, repo_paths

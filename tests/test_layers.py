"""The package's one rule of dependencies: a module imports only its own folder and the layers
below it (README, "Layers"), and no import of the package hides inside a function outside
``cli.py``."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pdclm"

LAYERS = (
    ("vocab", "config", "io", "dist", "layers"),
    ("data", "pse"),
    ("memory",),
    ("model",),
    ("cognition",),
    ("eval",),
    ("train",),
    ("pipeline",),
    ("bench",),
    ("cli",),
    ("__main__",),
)
"""Bottom to top. A unit is a folder or a top-level module of the package."""
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
STANDALONE = ("config", "vocab")
"""Base modules that import nothing from the package."""
LOCAL_IMPORTS_ALLOWED = ("cli.py",)
"""Start-up time: the CLI imports what a subcommand needs when it runs."""


def unit_of(module: str) -> str:
    return module.split(".")[1]


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        src_unit = rel.parts[0].removesuffix(".py")
        tree = ast.parse(path.read_text())
        functions = [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        inside = {id(n) for f in functions for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
                if node.module == "pdclm":  # `from pdclm import dist`
                    targets = [f"pdclm.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in (t for t in targets if t.startswith("pdclm.")):
                where = f"pdclm/{rel}:{node.lineno}"
                unit = unit_of(target)
                if id(node) in inside and str(rel) not in LOCAL_IMPORTS_ALLOWED:
                    found.append(f"{where}: imports {target} inside a function")
                if src_unit in STANDALONE:
                    found.append(f"{where}: {src_unit}.py imports nothing from pdclm ({target})")
                elif unit != src_unit and RANK[unit] >= RANK[src_unit] and RANK[src_unit] > 0:
                    found.append(
                        f"{where}: {src_unit} (layer {RANK[src_unit]}) imports {target} "
                        f"(layer {RANK[unit]}): import only your folder or a layer below it"
                    )
    return found


def test_every_import_points_down_the_layers():
    assert violations() == []


def test_every_unit_of_the_package_has_a_layer():
    units = {
        p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()
    }
    units -= {"__init__", "__pycache__", "presets"}
    assert units == set(RANK)


@pytest.mark.parametrize(
    ("file", "line", "rule"),
    [
        ("model/pdclm.py", "from pdclm.train.loop import Trainer", "imports pdclm.train.loop"),
        ("data/shards.py", "from pdclm.pse.patcher import calibrate", "imports pdclm.pse.patcher"),
        ("config.py", "from pdclm.vocab import BOS", "imports nothing from pdclm"),
        ("eval/tasks.py", "def f():\n    from pdclm.vocab import BOS", "inside a function"),
    ],
)
def test_a_planted_upward_or_hidden_import_is_caught(tmp_path, file, line, rule):
    """The checker finds each kind of break, naming the file and line."""
    tree = tmp_path / "pdclm"
    for path in PACKAGE.rglob("*.py"):
        (tree / path.relative_to(PACKAGE)).parent.mkdir(parents=True, exist_ok=True)
        (tree / path.relative_to(PACKAGE)).write_text(path.read_text())
    target = tree / file
    target.write_text(target.read_text() + "\n\n" + line + "\n")
    found = violations(tree)
    assert len(found) == 1 and found[0].startswith(f"pdclm/{file}:") and rule in found[0]

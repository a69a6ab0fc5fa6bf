"""The simulator's modules form layers that import downward only: no import cycle, imports inside
functions and under ``TYPE_CHECKING`` included (issue 14)."""

from __future__ import annotations

from pathlib import Path

import batcher.simulator
from tests.simulator.test_tokens import imported

PACKAGE = Path(batcher.simulator.__file__).parent

#: Bottom first. A module may import simulator modules of earlier layers only.
LAYERS: list[set[str]] = [
    {"config", "errors", "ledger", "records", "schemas", "tokens"},  # plain records and rules
    {"wire", "validate", "buckets", "faults"},  # HTTP conventions, body checks, limits, faults
    {"promptcache", "filestore", "batchstore"},  # the prompt cache; the stores
    {"answers"},  # answering a checked body
    {"core"},  # the Simulator: wires the parts, the one process/record path
    {"messages", "files", "batches", "models_api", "control"},  # route handlers
    {"app"},  # routing and the cross-cutting rules
    {"server"},  # serving it
]


def layer_of(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if module in layer)


def simulator_imports(path: Path) -> set[str]:
    """The simulator modules ``path`` imports, wherever in the file the import is."""
    prefix = "batcher.simulator."
    names = {n[len(prefix) :].split(".")[0] for n in imported(path) if n.startswith(prefix)}
    return {n for n in names if (PACKAGE / f"{n}.py").exists()} - {path.stem}


def test_every_module_has_a_layer() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    placed = set().union(*LAYERS)
    assert modules - placed == set(), "place new simulator modules in LAYERS"
    assert placed - modules == set()
    assert sum(len(layer) for layer in LAYERS) == len(placed)


def test_modules_import_only_from_the_layers_below() -> None:
    upward = {
        path.stem: sorted(n for n in simulator_imports(path) if layer_of(n) >= layer_of(path.stem))
        for path in PACKAGE.glob("*.py")
        if path.stem != "__init__"
    }
    assert {module: names for module, names in upward.items() if names} == {}


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from batcher.simulator.app import create_app\n    return create_app\n")
    assert simulator_imports(source) == {"app"}

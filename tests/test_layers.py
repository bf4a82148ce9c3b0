"""The package's imports point down: no part of adarec imports a part above it.

``LAYERS`` is the architecture of the README ("Architecture"), bottom first. A module may
import its own package and anything in a lower layer; packages of one layer are independent
of each other. Every import counts, also one inside a function or under ``TYPE_CHECKING``:
a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("io",),
    ("runtime",),
    ("config", "plots"),
    ("data", "models", "evaluate", "distill"),
    ("nas",),
    ("registry",),
    ("train", "runs"),
    ("serve",),
    ("pipeline",),
    ("cli", "api"),
    ("__init__", "__main__"),
]
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    """``src/adarec/train/loop.py`` -> ``adarec.train.loop`` (a package: its __init__)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """The layer entry a module of adarec belongs to: ``adarec.train.loop`` -> ``train``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every adarec module that ``source`` (the module ``module``) imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                package = module.split(".")[: len(module.split(".")) - (not is_package)]
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from adarec import serve`` imports the package serve.
            names = [f"{base}.{alias.name}" for alias in node.names] if base == "adarec" else [base]
            found += [(node.lineno, name) for name in names]
    return [(line, name) for line, name in found if name.split(".")[0] == "adarec"]


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Each import of ``source`` that reaches a part of adarec at or above its own layer."""
    own = part_of(module)
    found = []
    for line, name in imported(source, module, is_package):
        target = part_of(name)
        if target != own and LEVEL.get(target, len(LAYERS)) >= LEVEL[own]:
            found.append(f"{module} (line {line}) imports {name}: {target} is not below {own}")
    return found


def modules() -> list[Path]:
    return sorted((SRC / "adarec").rglob("*.py"))


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(module_name(path)) for path in modules()}
    missing, gone = sorted(parts - set(LEVEL)), sorted(set(LEVEL) - parts)
    assert not missing, f"add {missing} to LAYERS in {__file__} and to the README's architecture"
    assert not gone, f"LAYERS names {gone}, which no longer exist"


def test_no_module_imports_a_layer_above_it():
    found = []
    for path in modules():
        found += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not found, "imports pointing up:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("adarec.data.readers", "from adarec.train.loop import run_training"),
        ("adarec.data.readers", "def f():\n    import adarec.serve.app\n"),
        ("adarec.data.readers", "if TYPE_CHECKING:\n    from adarec.pipeline import run\n"),
        ("adarec.runtime.logs", "from adarec import config"),
        ("adarec.models.base", "from adarec.evaluate.metrics import full_ranks"),
        ("adarec.nas.cells", "from ..train import loop"),
    ],
)
def test_an_import_pointing_up_or_sideways_is_found(module: str, source: str):
    assert violations(source, module)


def test_imports_pointing_down_or_inside_are_allowed():
    source = "from adarec.models.base import SeqOutput\nfrom . import genotype\nimport torch\n"
    assert not violations(source, "adarec.nas.cells")
    assert not violations("from adarec import runtime, errors", "adarec.config")

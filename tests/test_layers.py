"""The packages form layers: labelkit (shared) <- mal, gdino, sam (labelers) <- auto_label (front door).
No module imports a package above its own layer."""

import ast

import pytest
from conftest import REPO

LAYERS = {"labelkit": 0, "mal": 1, "gdino": 1, "sam": 1, "auto_label": 2}
# Labelers may share among themselves where one builds on another (sam reuses gdino's prompts and mal's writer).
ALLOWED_SIDEWAYS = {("sam", "gdino"), ("sam", "mal")}


def imported_packages(path) -> set[str]:
    """Top-level names of every package a module imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(LAYERS)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_module_imports_upward(package):
    modules = sorted((REPO / package).glob("*.py"))
    assert modules
    for path in modules:
        for imported in imported_packages(path):
            upward = LAYERS[imported] > LAYERS[package]
            sideways = imported != package and LAYERS[imported] == LAYERS[package]
            assert not upward, f"{path.relative_to(REPO)} imports {imported}, a layer above {package}"
            assert not sideways or (package, imported) in ALLOWED_SIDEWAYS, (
                f"{path.relative_to(REPO)} imports {imported}"
            )


def test_the_shared_layer_imports_no_labeler():
    for path in sorted((REPO / "labelkit").glob("*.py")):
        assert not imported_packages(path) - {"labelkit"}, path.name

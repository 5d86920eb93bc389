"""The benchmark scripts are not run by the tests (they take minutes), but they must stay importable."""

import importlib.util
import sys

import pytest
from conftest import REPO

BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_script_imports(path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(path.parent), *sys.path])  # restored afterwards, as the scripts add to it
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    try:
        spec.loader.exec_module(module)
    finally:
        for script in BENCHMARKS:  # one script imports another by name
            sys.modules.pop(script.stem, None)
    assert callable(module.main)

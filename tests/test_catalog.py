"""The bundled-model catalog: names to files, the default model, and imports that point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import emorec
from emorec.catalog import BUNDLED_NAMES, DEFAULT_MODEL, MODELS_DIR, bundled_name, names_a_model, onnx_path

SOURCES = Path(emorec.__file__).parent


def _emorec_imports(module: str) -> set[str]:
    """Every emorec module that module imports, at the top or inside a function."""
    tree = ast.parse((SOURCES / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("emorec"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("emorec"))
    return found


def test_bundled_means_the_default_model_and_other_names_are_paths(tmp_path):
    assert onnx_path("bundled") == onnx_path(DEFAULT_MODEL) and onnx_path("bundled-int8") == onnx_path(f"{DEFAULT_MODEL}-int8")
    assert onnx_path(None) == onnx_path("bundled") == MODELS_DIR / f"emorec-{DEFAULT_MODEL}.onnx"
    assert onnx_path("ferplus2") == Path("ferplus2") and onnx_path(str(tmp_path / "m.keras")) == tmp_path / "m.keras"
    assert names_a_model("fer2013") and names_a_model("x.onnx") and not names_a_model("photo.jpg")


@pytest.mark.parametrize("name", BUNDLED_NAMES)
def test_every_bundled_name_has_its_files(name):
    assert onnx_path(name).is_file() and onnx_path(f"{name}-int8").is_file()
    assert not (MODELS_DIR / f"emorec-{name}.keras").exists()  # the base install ships ONNX only
    assert (MODELS_DIR / f"emorec-{name}.md").is_file()  # its model card
    assert bundled_name(name) == name and bundled_name(str(onnx_path(name))) is None


def test_the_catalog_imports_nothing_from_emorec():
    assert _emorec_imports("catalog") == set()


def test_config_imports_no_module_that_imports_it():
    importers = {module for module in ("labels", "runtime") if "emorec.config" in _emorec_imports(module)}
    assert importers and not {f"emorec.{module}" for module in importers} & _emorec_imports("config")

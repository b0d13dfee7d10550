"""pyproject.toml ships every config group: setuptools installs only the packages it lists, so a folder of
configs/ missing from `packages` or `package-data` would be absent from a non-editable `pip install .`
(today with a deprecation warning, later silently)."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib  # Python >= 3.11
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package, where installed; else skipped
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _config_groups() -> list[str]:
    folders = {p.parent for p in (ROOT / "configs").rglob("*.yaml")}
    return sorted("c2ir.configs" + "".join(f".{part}" for part in f.relative_to(ROOT / "configs").parts)
                  for f in folders)


def test_every_config_folder_is_a_listed_package_with_its_yaml():
    st = _setuptools()
    groups = _config_groups()
    assert "c2ir.configs.detectors" in groups and len(groups) >= 8   # the scan found the real tree
    missing = [g for g in groups if g not in st["packages"]]
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    no_data = [g for g in groups if "*.yaml" not in st["package-data"].get(g, [])]
    assert not no_data, f"add '{no_data[0]}' = [\"*.yaml\"] to [tool.setuptools.package-data]"


def test_every_python_package_of_c2ir_is_listed():
    st = _setuptools()
    pkgs = sorted("c2ir" + "".join(f".{p}" for p in init.parent.relative_to(ROOT / "c2ir").parts)
                  for init in (ROOT / "c2ir").rglob("__init__.py") if "__pycache__" not in init.parts)
    assert "c2ir.detectors" in pkgs
    missing = [p for p in pkgs if p not in st["packages"]]
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"

"""The built wheel carries the recipes and the SPDX license, and an install from it finds them."""

from __future__ import annotations

import email
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hrpo.config import RECIPES_DIR, recipes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # setuptools >= 77 reads the SPDX license string; no build isolation, so nothing is downloaded.
    pytest.importorskip("setuptools", minversion="77")
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy, so the checkout gets no build/ or egg-info directories.
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
        + ["--disable-pip-version-check", "-w", str(dist), str(source)],
        check=True,
    )
    (whl,) = dist.glob("hrpo-*.whl")
    return whl


def test_wheel_ships_the_recipes_and_the_spdx_license(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(z.read(meta))
    shipped = {p.relative_to(RECIPES_DIR.parent).as_posix() for p in RECIPES_DIR.rglob("*.yaml")}
    assert {
        "configs/quickstart.yaml",
        "configs/accelerate/ddp.yaml",
        "configs/accelerate/fsdp.yaml",
    } <= shipped
    assert {f"hrpo/{name}" for name in shipped} <= names
    assert metadata["License-Expression"] == "Apache-2.0" and metadata["License"] is None


def test_an_install_from_the_wheel_loads_a_recipe_by_name(wheel, tmp_path, monkeypatch):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q"]
        + ["--disable-pip-version-check", "--target", str(target), str(wheel)],
        check=True,
    )
    # The installed config module, loaded by its file (importing the package would take torch and
    # transformers along, and this process already has the checkout's hrpo).
    installed = target / "hrpo" / "config.py"
    spec = importlib.util.spec_from_file_location("installed_hrpo_config", installed)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)  # no checkout around: the recipe must come from the install
    assert module.recipes() == recipes()
    assert module.recipe_path("quickstart") == target / "hrpo" / "configs" / "quickstart.yaml"
    assert module.load_config("quickstart").output_dir == "runs/quickstart"
    assert module.recipe_path("accelerate/fsdp").is_file()

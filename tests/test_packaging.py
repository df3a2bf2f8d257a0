"""The built wheel carries the recipes and the SPDX license, and an install from it finds them."""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hrpo.recipes import RECIPES_DIR, recipes

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
    # A fresh interpreter with the install first on the path and no checkout around (cwd), so the
    # package and its recipes must come from the install.
    probe = (
        "import json, hrpo, hrpo.recipes as r;"
        "print(json.dumps([hrpo.__file__, r.recipes(), str(r.recipe_path('quickstart')),"
        " r.load_config('quickstart').output_dir, r.recipe_path('accelerate/fsdp').is_file()]))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    package, names, quickstart, output_dir, fsdp = json.loads(out.stdout.splitlines()[-1])
    assert Path(package).is_relative_to(target)
    assert names == recipes()
    assert Path(quickstart) == target / "hrpo" / "configs" / "quickstart.yaml"
    assert output_dir == "runs/quickstart" and fsdp

"""Installed like a package: the wheel carries the example configs, and a built-in config name
(``smoke``) or the default config loads from any folder, without the source tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (never in the shared working tree: no build/ left there)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "edgekd", src / "edgekd", symlinks=True, ignore=IGNORE)  # keeps the configs link
    shutil.copytree(REPO / "configs", src / "configs", ignore=IGNORE)
    out = tmp_path_factory.mktemp("wheel")
    # offline: --no-build-isolation uses this venv's setuptools instead of fetching one
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300, env=_clean_env())
    if proc.returncode != 0 and "No module named" in proc.stderr and "setuptools" in proc.stderr:
        pytest.skip("setuptools is not installed in this environment, so no wheel can be built offline")
    assert proc.returncode == 0, proc.stderr
    (whl,) = out.glob("edgekd-*.whl")
    return whl


def test_wheel_carries_every_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert shipped, "the repository has no configs"
    for name in shipped:
        assert f"edgekd/configs/{name}" in names, sorted(n for n in names if "config" in n)
    assert "edgekd/py.typed" in names


def test_installed_package_loads_builtin_configs_from_any_folder(wheel: Path, tmp_path: Path) -> None:
    """The unpacked wheel alone (no source tree on the path) resolves ``smoke`` and the default config."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import edgekd, sys\n"
        "from pathlib import Path\n"
        "from edgekd.config import DEFAULT_CONFIG, load_config\n"
        f"assert Path(edgekd.__file__).is_relative_to({str(site)!r}), edgekd.__file__\n"
        f"assert DEFAULT_CONFIG.is_relative_to({str(site)!r}), DEFAULT_CONFIG\n"
        "print(load_config('smoke', registries=False).name, load_config(registries=False).name)\n"
    )
    env = _clean_env()
    env["PYTHONPATH"] = str(site)  # ahead of the editable install of the repository
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["smoke", "fashion_mnist"]


def test_torch_is_a_supported_range_and_make_pins_it() -> None:
    """pyproject states a range (keeps a user's CUDA torch); constraints.txt pins the tested point for make."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    train = {req.split(">")[0].split("=")[0].split("<")[0].strip(): req
             for req in meta["project"]["optional-dependencies"]["train"]}
    assert train["torch"].replace(" ", "") == "torch>=2.11,<2.15"
    assert train["torchvision"].replace(" ", "") == "torchvision>=0.26,<0.30"
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    makefile = (REPO / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
    assert any(line.startswith("$(VENV)/.installed:") and "constraints.txt" in line for line in makefile.splitlines())

"""The deployment side runs without torch.

Statically: every module under ``edgekd/deploy`` and every ground-floor module (the top-level
``edgekd/*.py`` files except the entry points ``cli``, ``pipeline`` and ``__main__``) is walked
import by import (ast), transitively, and none reaches torch or the training side. Inside that
boundary every import counts, also one inside a function; where the walk leaves it for a numpy
package of the training side (``edgekd.data``, ``edgekd.robustness``: the config checks names
against their registries) it follows what importing that module executes (module level). At run time:
imports leave torch out of sys.modules, and the gate works in a fresh virtual environment that holds
numpy, onnxruntime, PyYAML and edgekd but no torch.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from onnx_helpers import make_run

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "edgekd"
DEPLOY_MODULES = ("edgekd", "edgekd.deploy.gate", "edgekd.deploy.runtime", "edgekd.deploy.doctor", "edgekd.deploy.report",
                  "edgekd.manifest", "edgekd.config", "edgekd.environment")
TRAINING_ONLY = ("torch", "torchvision", "onnxsim")
# The torch side of the package: nothing on the deploy side or the ground floor may reach these.
TORCH_SIDE = ("edgekd.train", "edgekd.models", "edgekd.losses", "edgekd.quant", "edgekd.stages", "edgekd.exporting",
              "edgekd.pipeline", "edgekd.cli", "edgekd.data.loader", "edgekd.data.augment", "edgekd.robustness.attacks")
ENTRY_POINTS = ("cli", "pipeline", "__main__")  # top-level modules that are not ground floor


def _module_file(name: str) -> Path | None:
    """The source file of an ``edgekd`` module, or None when ``name`` is not one."""
    parts = name.split(".")
    if parts[0] != "edgekd":
        return None
    base = REPO.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def _catches_import_error(node: ast.Try) -> bool:
    names = {n.id for h in node.handlers for n in ast.walk(h.type) if isinstance(n, ast.Name)} if node.handlers else set()
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _in_boundary(name: str) -> bool:
    parts = name.split(".")
    return name == "edgekd" or parts[:2] == ["edgekd", "deploy"] or (len(parts) == 2 and parts[1] not in ENTRY_POINTS
                                                                     and (PKG / f"{parts[1]}.py").is_file())


def _imports(name: str, module_level_only: bool = False) -> set[str]:
    """Modules that executing ``name`` can import: module level and (unless ``module_level_only``) inside functions, except

    - imports under ``if TYPE_CHECKING:`` (never executed),
    - imports in the body of a ``try`` that catches ImportError (optional: a torch-free install takes
      the ``except`` branch, e.g. ``environment.training_precision``, the torchvision download fallback),
    - the function bodies of the package root ``edgekd/__init__.py`` (``edgekd.run`` is the training API;
      importing ``edgekd`` runs only its module-level statements).
    """
    path = _module_file(name)
    assert path is not None, name
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Try) and _catches_import_error(node):
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (module_level_only or name == "edgekd"):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            for a in node.names:  # ``from pkg import submodule``
                if _module_file(f"{mod}.{a.name}") is not None:
                    found.add(f"{mod}.{a.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    # importing a.b.c first imports a and a.b
    return {p for m in found for p in (".".join(m.split(".")[:i + 1]) for i in range(len(m.split("."))))}


def _reach(start: str) -> dict[str, str | None]:
    """Every module reachable from ``start`` -> the module that imported it (for the chain in a failure)."""
    parent: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        mod = todo.pop()
        if _module_file(mod) is None:
            continue
        for dep in sorted(_imports(mod, module_level_only=not _in_boundary(mod))):
            if dep not in parent:
                parent[dep] = mod
                todo.append(dep)
    return parent


def _chain(parent: dict[str, str | None], mod: str) -> str:
    out = [mod]
    while parent[out[-1]] is not None:
        out.append(parent[out[-1]])  # type: ignore[arg-type]
    return " <- ".join(out)


def _boundary_modules() -> list[str]:
    deploy = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                    for p in (PKG / "deploy").rglob("*.py"))
    floor = sorted(f"edgekd.{p.stem}" for p in PKG.glob("*.py") if p.stem not in ENTRY_POINTS and p.stem != "__init__")
    return ["edgekd"] + floor + deploy


def test_walker_sees_torch_where_it_is() -> None:
    """The walk is not vacuous: the training side reaches torch, the runtime reaches onnxruntime."""
    assert "torch" in _reach("edgekd.train.engine")
    assert "torch" in _reach("edgekd.exporting")
    assert "onnxruntime" in _reach("edgekd.deploy.gate")  # through its lazy runtime import
    assert {"edgekd.deploy.gate", "edgekd.deploy.doctor", "edgekd.deploy.onnx_io", "edgekd.config",
            "edgekd.deploy.report.run_sections"} <= set(_boundary_modules())


@pytest.mark.parametrize("module", _boundary_modules())
def test_deploy_side_and_ground_floor_never_reach_torch(module: str) -> None:
    """The package boundary: no import chain from the deploy side or the ground floor reaches torch."""
    parent = _reach(module)
    bad = sorted(m for m in parent if m.split(".")[0] in TRAINING_ONLY or m.startswith(TORCH_SIDE))
    assert not bad, "\n".join(_chain(parent, m) for m in bad)


# Runs in a child interpreter: import the deployment side, run the gate in-process, report what got loaded.
PROBE = """
import json, sys
import {modules}
from edgekd.deploy.gate import main_gate
rc = main_gate(sys.argv[1:])
site = {site!r}
tops = sorted({{m.split('.')[0] for m, mod in list(sys.modules.items())
               if (getattr(mod, '__file__', None) or '').startswith(site)}})
print(json.dumps({{"rc": rc, "site_packages": tops, "loaded": sorted(sys.modules)}}))
"""


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _probe(python: str, run_dir: Path, site: str, *gate_args: str) -> dict:
    code = PROBE.format(modules=", ".join(DEPLOY_MODULES), site=site)
    proc = subprocess.run([python, "-c", code, str(run_dir), *gate_args], cwd=run_dir.parent, env=_clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("torchfree") / "run", budgets={"min_accuracy": 0.5})


def test_deployment_imports_and_gate_leave_torch_unloaded(run_dir: Path) -> None:
    """In the project's own venv (torch installed) importing and running the gate never loads torch."""
    site = sysconfig.get_paths()["purelib"]
    out = _probe(sys.executable, run_dir, site)
    assert out["rc"] == 0
    loaded = set(out["loaded"])
    assert not loaded & set(TRAINING_ONLY), sorted(loaded & set(TRAINING_ONLY))
    # the torch side of the package must not sneak in through an import chain either
    assert not {m for m in loaded if m.startswith(TORCH_SIDE)}
    assert "onnxruntime" in out["site_packages"]


@pytest.mark.slow
def test_gate_runs_in_a_venv_without_torch(run_dir: Path, tmp_path: Path) -> None:
    """A fresh venv that sees only the packages the gate loads (found above) plus the repo: no torch at all."""
    site = sysconfig.get_paths()["purelib"]
    needed = _probe(sys.executable, run_dir, site)["site_packages"]
    assert not set(needed) & set(TRAINING_ONLY)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60, env=_clean_env())
    py = str(venv / "bin" / "python")
    venv_site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    check=True, capture_output=True, text=True, env=_clean_env()).stdout.strip())
    # symlink each needed top-level package (and its bundled shared libraries, e.g. numpy.libs) into the venv
    src = Path(site)
    for entry in src.iterdir():
        name = entry.name
        stem = name.split(".")[0] if entry.is_file() else name
        if stem in needed or name in {f"{n}.libs" for n in needed} or name.removesuffix(".libs") in needed:
            (venv_site / name).symlink_to(entry)
    (venv_site / "edgekd_repo.pth").write_text(str(REPO) + "\n")
    no_torch = subprocess.run([py, "-c", "import torch"], capture_output=True, text=True, env=_clean_env(), timeout=60)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    out = _probe(py, run_dir, str(venv_site))
    assert out["rc"] == 0 and "torch" not in out["loaded"]
    failing = subprocess.run([py, "-m", "edgekd.deploy.gate", str(run_dir), "--min-accuracy", "0.99"], cwd=tmp_path,
                             env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert failing.returncode == 1 and "gate: FAIL" in failing.stdout, failing.stderr

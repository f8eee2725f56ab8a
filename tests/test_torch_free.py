"""The deployment side runs without torch: imports leave torch out of sys.modules, and the gate
works in a fresh virtual environment that holds numpy, onnxruntime, PyYAML and edgekd but no torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from test_gate import make_run

REPO = Path(__file__).resolve().parents[1]
DEPLOY_MODULES = ("edgekd", "edgekd.deploy.gate", "edgekd.deploy.runtime", "edgekd.manifest", "edgekd.config", "edgekd.environment")
TRAINING_ONLY = ("torch", "torchvision", "onnxsim")

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
    assert not {m for m in loaded if m.startswith(("edgekd.data.loader", "edgekd.models", "edgekd.train.engine",
                                                     "edgekd.losses", "edgekd.quant", "edgekd.stages"))}
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

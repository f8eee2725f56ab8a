"""docs/ci/edgekd-gate.yml: the YAML parses, every edgekd command in it parses with the CLI's parser, and
its shell steps run for real on run folders (git and gh replaced by stubs that record their arguments)."""
from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from edgekd.cli import build_parser
from onnx_helpers import make_run

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "docs" / "ci" / "edgekd-gate.yml"


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps() -> dict[str, dict]:
    (job,) = _workflow()["jobs"].values()
    return {s.get("name", s.get("uses")): s for s in job["steps"]}


def _edgekd_commands(script: str, env: dict[str, str]) -> list[list[str]]:
    """Every ``edgekd ...`` command line of a step's shell script, with $VARS expanded, as argv."""
    out = []
    for line in script.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("edgekd "):
            expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), line)
            out.append(shlex.split(expanded))
    return out


def test_workflow_runs_on_pull_requests_and_installs_no_torch() -> None:
    wf = _workflow()
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert "pull_request" in triggers
    install = _steps()["Install edgekd (deploy side only)"]["run"]
    assert "EDGEKD_PACKAGE" in install and "[train]" not in install and "torch" not in install
    assert "[train]" not in wf["env"]["EDGEKD_PACKAGE"]


def test_every_edgekd_command_in_the_workflow_parses() -> None:
    env = _workflow()["env"]
    commands = [c for s in _steps().values() if "run" in s for c in _edgekd_commands(s["run"], env)]
    names = [c[1] for c in commands]
    assert names == ["gate", "compare"]
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv[1:])  # exits 2 (fails the test) on an unknown flag
        if args.command == "gate":
            assert args.junit == "gate.xml" and args.summary == "gate.md" and args.run_dir == env["RUN_DIR"]


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_the_steps_gate_compare_and_post_a_comment(tmp_path: Path) -> None:
    steps, env = _steps(), _workflow()["env"]
    repo = tmp_path / "repo"
    make_run(repo / env["RUN_DIR"], budgets={"max_size_mb": 10.0})
    make_run(repo / "base" / env["RUN_DIR"])  # what `git worktree add base` would check out
    stubs = tmp_path / "bin"
    stubs.mkdir()
    _stub(stubs, "git", 'echo "git $*" >> "$STUB_LOG"')
    _stub(stubs, "gh", 'echo "gh $*" >> "$STUB_LOG"; cp "$5" "$STUB_LOG.comment"')  # gh pr comment N --body-file F
    log = tmp_path / "stub.log"
    run_env = {**os.environ, **env, "PATH": f"{stubs}:{Path(sys.executable).parent}:{os.environ['PATH']}",
               "STUB_LOG": str(log), "GITHUB_BASE_REF": "main", "PR": "7", "GH_TOKEN": "x"}
    run_env.pop("GITHUB_STEP_SUMMARY", None)
    for name in ("Gate the model", "Compare with the base branch", "Post the summary on the pull request"):
        proc = subprocess.run(["bash", "-e", "-c", steps[name]["run"]], cwd=repo, env=run_env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
    assert (repo / "gate.xml").is_file() and "PASS" in (repo / "gate.md").read_text()
    comment = Path(f"{log}.comment").read_text()
    assert comment.startswith(f"## edgekd gate: {env['RUN_DIR']}")
    assert "PASS" in comment and "*student_int8*" in comment and "| top-1 accuracy |" in comment
    calls = log.read_text()
    assert "git worktree add --detach base FETCH_HEAD" in calls and "gh pr comment 7 --body-file comment.md" in calls


def test_a_missed_budget_fails_the_gate_step(tmp_path: Path) -> None:
    env = _workflow()["env"]
    repo = tmp_path / "repo"
    make_run(repo / env["RUN_DIR"], budgets={"min_accuracy": 0.99})  # the band model scores 0.7
    proc = subprocess.run(["bash", "-e", "-c", _steps()["Gate the model"]["run"]], cwd=repo, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert proc.returncode == 1 and "FAIL" in (repo / "gate.md").read_text()

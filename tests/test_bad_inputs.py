"""Every bad input a user can give, as a real CLI subprocess: exit 2, a message naming the problem, no
traceback, and no file of a finished run changed (issue 8).

One tiny run is built once per session (the smoke config shrunk by --set overrides); each row copies it,
runs one command against the copy, and compares the sha256 of every earlier file before and after.
The rows are the table in the README ("Bad inputs"); keep the two in step.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import requires_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
EDGEKD = [str(Path(sys.executable).parent / "edgekd")]
# The smoke config shrunk to seconds: the rows need a finished run folder, not a good model.
TINY = ["data.train_subset=600", "data.test_subset=200", "data.val_size=200",
        "teacher.width=0.25", "teacher_train.max_steps_per_epoch=3", "distill.train.max_steps_per_epoch=3",
        "qat.calibration_batches=1", "qat.train.max_steps_per_epoch=2", "export.parity_images=32",
        "check.robustness.enabled=false", "check.latency.batch_sizes=[1]", "check.latency.threads=[1]",
        "check.latency.warmup=1", "check.latency.runs=3", "check.latency.profile=false"]
SETS = [a for o in TINY for a in ("--set", o)]
pytestmark = requires_fashion_mnist


@dataclass
class Ctx:
    """Where a row runs: ``out`` holds the copied run folder ``run``; ``scratch`` is for the row's own files."""

    out: Path
    run: Path
    scratch: Path

    def fill(self, args: list[str]) -> list[str]:
        return [a.format(R=self.out, RUN=self.run, T=self.scratch, S=SMOKE) for a in args]


@dataclass(frozen=True)
class Row:
    """One bad input: the command (placeholders {R} out folder, {RUN} run folder, {T} scratch, {S} smoke
    config), the exit code, a regex the output must match, and what to prepare or check besides."""

    id: str
    args: list[str]
    message: str
    code: int = 2
    setup: Callable[[Ctx], None] | None = None
    check: Callable[[Ctx, subprocess.CompletedProcess[str]], None] | None = None
    module: str | None = None  # run ``python -m MODULE`` instead of the edgekd script


# ------------------------------------------------------------------ helpers for rows


def write(name: str, text: str | bytes) -> Callable[[Ctx], None]:
    """A setup that writes ``text`` to scratch/``name``."""
    def setup(ctx: Ctx) -> None:
        p = ctx.scratch / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def edit_manifest(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        path = ctx.run / "manifest.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return setup


def change_int8(ctx: Ctx) -> None:
    """Append a byte to the int8 model: it no longer matches its recorded sha256."""
    rec = json.loads((ctx.run / "manifest.json").read_text())["stages"]["export"]["artifacts"]["student_int8"]
    with open(ctx.run / rec["path"], "ab") as fh:
        fh.write(b"\0")


def uint8_model(ctx: Ctx) -> None:
    """An INT8 model that takes raw uint8 pixels (DequantizeLinear first)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(1 / 255, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "zp"),
             numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "zp"], ["xf"]), helper.make_node("Conv", ["xf", "w"], ["y"])]
    graph = helper.make_graph(nodes, "u8", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(ctx.scratch / "u8.onnx"))


def pickled_object(ctx: Ctx) -> None:
    """A 'weights' file that holds a Python object: torch's safe loader refuses it."""
    import collections

    (ctx.scratch / "object.pt").write_bytes(pickle.dumps({"net": collections.OrderedDict(a=collections.Counter())}))


def no_unsafe_advice(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    assert "weights_only=False" not in proc.stderr and "trusted source" not in proc.stderr, proc.stderr


def junit_has_error(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    xml = (ctx.scratch / "gate.xml").read_text()
    assert 'errors="1"' in xml and "size_mb" in xml, xml


def no_verdict(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    assert "PASS" not in proc.stdout and "FAIL" not in proc.stdout, proc.stdout


def digits_with_broken_png(ctx: Ctx) -> None:
    """scratch/imgs: a tiny digits folder (edgekd.data.digits) whose 3/00001.png is truncated."""
    from edgekd.data.digits import write_digits_folder

    root = write_digits_folder(ctx.scratch / "imgs", per_class=3, size=8, mode="L")
    bad = root / "3" / "00001.png"
    bad.write_bytes(bad.read_bytes()[:40])


RUN = ["run", "-c", "{S}", "--out", "{R}", *SETS]  # the fixture's own config: unchanged stages are skipped
GATE = ["gate", "{RUN}"]

ROWS = [
    # --- config and command line, rejected at load
    Row("config file missing", ["run", "-c", "{T}/nope.yaml", "--out", "{R}"], r"nope\.yaml"),
    Row("config not YAML", ["run", "-c", "{T}/bad.yaml", "--out", "{R}"], r"YAML", setup=write("bad.yaml", "data: [1, 2\n")),
    Row("config empty (issue 8.6)", ["run", "-c", "{T}/empty.yaml", "--out", "{R}"], r"(?i)empty",
        setup=write("empty.yaml", "# nothing here\n")),
    Row("config a YAML list", ["run", "-c", "{T}/list.yaml", "--out", "{R}"], r"(?i)mapping",
        setup=write("list.yaml", "- data\n- teacher\n")),
    Row("unknown top-level key", [*RUN, "--set", "colour=red"], r"colour"),
    Row("unknown nested key", [*RUN, "--set", "data.batchsize=64"], r"batchsize"),
    Row("wrong type", [*RUN, "--set", "data.batch_size=many"], r"batch_size"),
    Row("--set without =", [*RUN, "--set", "data.batch_size"], r"data\.batch_size"),
    Row("data.batch_size=0 (issue 8.4)", [*RUN, "--set", "data.batch_size=0"], r"batch_size"),
    Row("unknown stage", [*RUN, "--stages", "teacher,bogus"], r"bogus"),
    Row("deterministic not a switch", [*RUN, "--set", "deterministic=sometimes"], r"deterministic.*auto, on, off"),
    Row("compile not a switch", [*RUN, "--set", "teacher_train.compile=fast"], r"teacher_train\.compile.*auto, on, off"),
    Row("unknown teacher arch", [*RUN, "--set", "teacher.arch=resnet999"], r"resnet999"),
    Row("unknown student arch", [*RUN, "--set", "student.arch=tinynet"],
        r"tinynet.*valid: .*mobilenet_v2.*torchvision:NAME, timm:NAME"),  # names and sources (issue 12)
    # width 1.0: outside models refuse other widths, checked before the name (as for "unknown torchvision weights")
    Row("unknown torchvision model (issue 12)", [*RUN, "--set", "teacher.width=1.0", "--set", "teacher.arch=torchvision:resnet19"],
        r"torchvision model 'resnet19'.*resnet18"),
    Row("unknown timm model (issue 12)", [*RUN, "--set", "student.width=1.0", "--set", "student.arch=timm:mobilenetv4_conv_smal"],
        r"timm model 'mobilenetv4_conv_smal'.*mobilenetv4_conv_small"),
    Row("unknown model source (issue 12)", [*RUN, "--set", "teacher.width=1.0", "--set", "teacher.arch=tv:resnet18"],
        r"unknown model source 'tv:'"),
    Row("TorchScript teacher file missing (issue 12)", [*RUN, "--set", "teacher.width=1.0", "--set", "teacher.arch=torchscript:{T}/none.ts"],
        r"none\.ts not found"),
    Row("unknown execution provider (issue 12)", [*RUN, "--set", "check.latency.provider=foo"],
        r"'foo' is not an onnxruntime execution provider; available here: .*CPUExecutionProvider"),
    Row("provider not installed (issue 12)", [*RUN, "--stages", "check", "--set", "check.latency.provider=openvino"],
        r"OpenVINOExecutionProvider' is not available.*available here: .*CPUExecutionProvider"),
    Row("unknown KD loss, failed run keeps config (issue 8.2)",
        [*RUN, "--set", "distill.loss=dkd9", "--set", "budgets.max_size_mb=0.5"], r"dkd9.*valid: .*dkd"),
    Row("feature KD pair without '=' (issue 13)", [*RUN, "--set", "distill.features.pairs=[net.layer2]"],
        r"distill\.features\.pairs\[0\].*teacher_layer=student_layer"),
    Row("extra teacher without weights (issue 13)",
        [*RUN, "--set", "distill.loss=multi_teacher", "--set", "distill.teachers=[{{arch: wrn16_4}}]"],
        r"distill\.teachers\[0\].*no weights"),
    Row("extra teachers with a single-teacher loss (issue 13)",
        [*RUN, "--set", "distill.teachers=[{{arch: wrn16_4, weights: x.pt}}]"], r"distill\.loss: multi_teacher"),
    Row("extra teacher weights file missing (issue 13)",
        [*RUN, "--stages", "distill", "--set", "distill.loss=multi_teacher",
         "--set", "distill.teachers=[{{arch: wrn16_4, weights: {T}/none.pt}}]"], r"none\.pt does not exist"),
    Row("unknown dataset", [*RUN, "--set", "data.dataset=imagenet42"], r"imagenet42"),
    Row("negative size budget in config", [*RUN, "--set", "budgets.max_size_mb=-1"], r"max_size_mb"),
    Row("unknown torchvision weights",  # width 1.0: narrower teachers are refused before the name is read
        [*RUN, "--stages", "teacher", "--set", "teacher.width=1.0", "--set", "teacher.weights=torchvision:NOPE"],
        r"NOPE"),
    # --- files and folders
    Row("--out under a regular file (issue 8.4)", ["run", "-c", "{S}", "--out", "{RUN}/config.yaml/x", *SETS],
        r"config\.yaml.*(?i:not a directory)"),
    Row("data.root missing (issue 8.3)",
        [*RUN, "--stages", "teacher", "--set", "data.root={T}/no-data", "--set", "data.download=false"], r"no-data"),
    Row("data.root without the files (issue 8.3)",
        [*RUN, "--stages", "teacher", "--set", "data.root={T}/empty-data", "--set", "data.download=false"],
        r"empty-data", setup=lambda ctx: (ctx.scratch / "empty-data").mkdir()),
    Row("teacher weights file missing", [*RUN, "--stages", "teacher", "--set", "teacher.weights={T}/none.pt"],
        r"none\.pt"),
    Row("teacher weights file corrupt (issue 8.7)", [*RUN, "--stages", "teacher", "--set", "teacher.weights={T}/bad.pt"],
        r"bad\.pt.*unreadable", setup=write("bad.pt", b"not a torch file" * 8), check=no_unsafe_advice),
    Row("teacher weights hold a Python object (issue 8.7)",
        [*RUN, "--stages", "teacher", "--set", "teacher.weights={T}/object.pt"], r"object\.pt.*not a plain tensor file",
        setup=pickled_object, check=no_unsafe_advice),
    Row("export parity fails: old files kept (issue 8.1)",
        [*RUN, "--stages", "export", "--set", "export.opset=18", "--set", "export.fp32_atol=1e-12",
         "--set", "export.fp32_rtol=1e-12"], r"disagrees"),
    # --- gate
    Row("gate: run folder missing (issue 8.8)", ["gate", "{T}/nowhere"], r"run folder .*nowhere does not exist"),
    Row("gate: folder without manifest", ["gate", "{T}"], r"no manifest\.json"),
    Row("gate: manifest not JSON", GATE, r"not valid JSON",
        setup=lambda ctx: (ctx.run / "manifest.json").write_text('{"stages": {')),
    Row("gate: manifest stages is a list (issue 8.4)", GATE, r"'stages' is a list",
        setup=edit_manifest(lambda d: d.update(stages=list(d["stages"])))),
    Row("gate: size_mb missing, JUnit still written (issue 8.4)",
        [*GATE, "--max-size-mb", "5", "--junit", "{T}/gate.xml"], r"size_mb",
        setup=edit_manifest(lambda d: d["stages"]["check"]["metrics"]["models"]["student_int8"].pop("size_mb")),
        check=junit_has_error),
    Row("gate: --junit unwritable (issue 8.4)", [*GATE, "--junit", "{RUN}/config.yaml/gate.xml"], r"JUnit.*gate\.xml",
        check=no_verdict),
    Row("gate: --summary unwritable", [*GATE, "--summary", "{RUN}/config.yaml/gate.md"], r"summary.*gate\.md",
        check=no_verdict),
    Row("gate: --min-accuracy -0.5 (issue 8.5)", [*GATE, "--min-accuracy", "-0.5"], r"min[_-]accuracy"),
    Row("gate: --min-accuracy 150 (issue 8.5)", [*GATE, "--min-accuracy", "150"], r"min[_-]accuracy"),
    Row("gate: --max-size-mb -1 (issue 8.5)", [*GATE, "--max-size-mb", "-1"], r"max[_-]size[_-]mb"),
    Row("gate: --max-size-mb nan (issue 8.5)", [*GATE, "--max-size-mb", "nan"], r"max[_-]size[_-]mb"),
    Row("gate: --max-latency-ms -5 (issue 8.5)", [*GATE, "--max-latency-ms", "-5"], r"(max[_-]latency|value)[_-]ms"),
    Row("gate: --max-size-mb not a number", [*GATE, "--max-size-mb", "abc"], r"invalid float value: 'abc'"),
    Row("gate: unknown model", [*GATE, "--model", "nosuch", "--min-accuracy", "0.1"], r"nosuch"),
    Row("gate: int8 file changed", GATE, r"sha256", setup=change_int8),
    Row("gate: --config missing", [*GATE, "--config", "{T}/nope.yaml"], r"nope\.yaml"),
    Row("gate: --baseline missing", [*GATE, "--max-accuracy-drop", "0.1", "--baseline", "{T}/nobase"], r"nobase"),
    Row("gate: latency budget at an unmeasured batch", [*GATE, "--max-latency-ms", "5", "--latency-batch", "64"],
        r"batch 64"),
    # --- doctor
    Row("doctor: ONNX file missing", ["doctor", "{T}/none.onnx"], r"none\.onnx does not exist"),
    Row("doctor: run folder missing", ["doctor", "{T}/norun"], r"run folder .*norun does not exist"),
    Row("doctor: not an ONNX file", ["doctor", "{T}/garbage.onnx"], r"not a readable ONNX model",
        setup=write("garbage.onnx", b"\x00garbage" * 10)),
    Row("doctor: int8 file changed", ["doctor", "{RUN}"], r"sha256", setup=change_int8),
    Row("doctor: uint8-input model is diagnosed (issue 8.4)", ["{T}/u8.onnx", "--fp32", "{T}/u8.onnx"],
        r"Measured at batch 1", code=0, setup=uint8_model, module="edgekd.deploy.doctor"),
    # --- report
    Row("report: run folder missing", ["report", "{T}/nowhere"], r"run folder .*nowhere does not exist"),
    Row("report: int8 file changed (issue 8.8)", ["report", "{RUN}"], r"sha256", setup=change_int8),
    Row("report: manifest stages is a list", ["report", "{RUN}"], r"'stages' is a list",
        setup=edit_manifest(lambda d: d.update(stages=list(d["stages"])))),
    Row("python -m edgekd.deploy.report without a folder", [], r"usage", module="edgekd.deploy.report"),
    Row("python -m edgekd.deploy.report on a missing folder", ["{T}/nowhere"], r"does not exist", module="edgekd.deploy.report"),
    Row("report: --compare run missing (issue 12)", ["report", "{RUN}", "--compare", "{T}/nowhere"],
        r"run folder .*nowhere does not exist"),
    # --- compare (issue 12)
    Row("compare: run B missing", ["compare", "{RUN}", "{T}/nowhere"], r"run folder .*nowhere does not exist"),
    Row("compare: run without check metrics", ["compare", "{RUN}", "{T}/bare"], r"bare\) has no check metrics",
        setup=write("bare/manifest.json", '{"schema": 1, "stages": {}}')),
    Row("compare: --model not measured", ["compare", "{RUN}", "{RUN}", "--model", "student_int4"],
        r"'student_int4' is not measured in both runs; both have: teacher, student_fp32, student_int8"),
    Row("compare: --out unwritable", ["compare", "{RUN}", "{RUN}", "--out", "{RUN}/config.yaml/cmp.md"],
        r"cannot write .*cmp\.md.*\n.*a file is in the way"),
    # --- edgekd tune (rejected before any training)
    Row("tune: --trials 0", ["tune", "-c", "{S}", "--trials", "0", "--out", "{T}/tune"], r"--trials must be a whole number >= 1"),
    Row("tune: unknown method in the search space", ["tune", "-c", "{S}", "--trials", "1", "--out", "{T}/tune",
        "--set", "tune.methods=[hinton,nope]"], r"tune\.methods\[1\].*'nope'; valid: .*hinton"),
    # --- sensitivity, divergence, mixed precision (issue 10)
    Row("sensitivity: run folder missing", ["sensitivity", "{T}/nowhere"], r"run folder .*nowhere does not exist"),
    Row("sensitivity: --images 0", ["sensitivity", "{RUN}", "--images", "0"], r"--images must be >= 1"),
    Row("sensitivity: int8 file changed", ["sensitivity", "{RUN}"], r"sha256", setup=change_int8),
    Row("divergence: unknown model", ["divergence", "{RUN}", "--model", "int4"], r"unknown model 'int4'; valid: int8, fp32"),
    Row("divergence: run folder missing", ["divergence", "{T}/nowhere"], r"run folder .*nowhere does not exist"),
    Row("divergence: a clean run agrees at the fused level", ["divergence", "{RUN}"],
        r"all \d+ Conv/Gemm layers agree .*optimization 'all', int8 kernels as fused", code=0),
    Row("qat.keep_float: unknown layer", [*RUN, "--stages", "qat", "--set", "qat.keep_float=[features.99]"],
        r"unknown layer\(s\) 'features\.99'; valid: features\.0\.0, "),
    Row("qat.keep_float_most_sensitive without a ranking", [*RUN, "--set", "qat.keep_float_most_sensitive=2"],
        r"qat\.sensitivity"),
    Row("qat.keep_float_most_sensitive larger than the layer count",
        [*RUN, "--set", "qat.keep_float_most_sensitive=3", "--set", "qat.sensitivity={T}/sens.json"],
        r"keep_float_most_sensitive.*<= 2", setup=write("sens.json", '{"ranking": ["features.0.0", "classifier.1"]}')),
    # --- your own data (issue 12): edgekd stats and the image-folder settings
    Row("stats: folder missing", ["stats", "{T}/noimages"], r"noimages does not exist"),
    Row("stats: unreadable image named", ["stats", "{T}/imgs"], r"(?s)3/00001\.png: unreadable image.*--on-corrupt skip",
        setup=digits_with_broken_png),
    Row("stats: --json unwritable", ["stats", "{T}/imgs", "--on-corrupt", "skip", "--json", "{RUN}/config.yaml/s.json"],
        r"s\.json", setup=digits_with_broken_png),
    Row("data.on_corrupt unknown", [*RUN, "--set", "data.on_corrupt=ignore"], r"on_corrupt.*valid: fail, skip"),
    Row("data.workers negative", [*RUN, "--set", "data.workers=-1"], r"data\.workers"),
    # --- the command line itself
    Row("no command", [], r"required"),
    Row("unknown command", ["trian"], r"invalid choice: 'trian'"),
    Row("unknown option", ["gate", "{RUN}", "--colour"], r"unrecognized arguments: --colour"),
]


# ------------------------------------------------------------------ the finished run and the comparison


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The out folder of one finished tiny run (teacher ... check, gate), built once."""
    out = tmp_path_factory.mktemp("bad-inputs") / "runs"
    proc = subprocess.run([*EDGEKD, *[a.format(S=SMOKE, R=out) for a in RUN]], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200, env={**os.environ, "EDGEKD_PROGRESS": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def recorded(run: Path) -> dict[str, Any]:
    """What a failed command must not change: every stage's artifacts, metrics and config hash, and the config.

    Anything else in the manifest (a failure history, the update time) may change.
    """
    try:
        data = json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError):  # rows that break the manifest on purpose compare its bytes instead
        return {}
    stages = data.get("stages")
    if not isinstance(stages, dict):
        return {}
    keep = ("status", "artifacts", "metrics", "config_hash")
    return {"config": data.get("config"), "stages": {s: {k: e.get(k) for k in keep} for s, e in stages.items()}}


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (manifest.json by its recorded content, see ``recorded``)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    record = recorded(folder / "smoke") if (folder / "smoke").is_dir() else {}
    if record:
        out["smoke/manifest.json"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return out


def run_row(row: Row, ctx: Ctx) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", row.module] if row.module else EDGEKD
    return subprocess.run([*cmd, *ctx.fill(row.args)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "EDGEKD_PROGRESS": "0"})


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, finished_run: Path, tmp_path: Path) -> None:
    out = Path(shutil.copytree(finished_run, tmp_path / "runs"))
    ctx = Ctx(out=out, run=out / "smoke", scratch=tmp_path / "scratch")
    ctx.scratch.mkdir()
    if row.setup:
        row.setup(ctx)
    before = digests(out)
    proc = run_row(row, ctx)
    output = proc.stderr + proc.stdout
    assert proc.returncode == row.code, output[-3000:]
    assert re.search(row.message, output), f"no match for {row.message!r} in:\n{output[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    after = digests(out)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"files changed or removed by a failed command: {changed}"
    if row.check:
        row.check(ctx, proc)


def test_the_table_covers_issue_8() -> None:
    """Every defect of issue 8 that is a bad input has a row (items 1-8; 8.x = the smaller ones)."""
    ids = " ".join(r.id for r in ROWS)
    for item in ("8.1", "8.2", "8.3", "8.4", "8.5", "8.6", "8.7", "8.8"):
        assert f"(issue {item})" in ids, item
    assert len(ROWS) >= 30


@pytest.mark.parametrize("content", ["object", "numpy", "garbage", "truncated", "empty"])
def test_weights_errors_never_advise_unsafe_loading(content: str, tmp_path: Path) -> None:
    """torch's error says to retry with weights_only=False (arbitrary code execution); edgekd must not repeat it."""
    import numpy as np
    import torch

    from edgekd.train.checkpoint import load_training_checkpoint
    from edgekd.errors import CheckpointError
    from edgekd.models.weights import read_weights_file

    path = tmp_path / "w.pt"
    if content == "object":
        pickled_object(Ctx(tmp_path, tmp_path, tmp_path))
        path = tmp_path / "object.pt"
    elif content == "numpy":
        torch.save({"w": np.ones(3)}, path)
    elif content == "garbage":
        path.write_bytes(b"not a torch file" * 8)
    else:
        torch.save({"w": torch.ones(3)}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if content == "truncated" else b"")
    for load in (read_weights_file, load_training_checkpoint):
        with pytest.raises(CheckpointError) as info:
            load(path)
        text = str(info.value)
        assert str(path) in text and ("unreadable" in text or "truncated" in text), text
        assert not re.search(r"weights_only\s*=?\s*False|trust", text), text
        assert info.value.__cause__ is None and info.value.__suppress_context__  # the torch message is not chained

"""Config loading and validation: unknown keys name the valid ones, wrong types name the key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.config import (CONFIG_DIR, DEFAULT_CONFIG, BudgetsConfig, LatencyBudget, builtin_configs, config_from_dict,
                           load_config, parse_override, validate_budgets)
from edgekd.errors import ConfigError
from edgekd.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def test_unknown_top_level_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({"teacherr": {}})
    msg = str(e.value)
    assert "unknown config key 'teacherr'" in msg
    for valid in ("teacher", "student", "distill", "budgets"):
        assert valid in msg


def test_unknown_nested_key_names_section_and_valid_keys() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({"distill": {"temprature": 2}})
    msg = str(e.value)
    assert "distill.temprature" in msg and "temperature" in msg and "alpha" in msg


def test_wrong_type_names_key_and_value() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": {"batch_size": "big"}})
    assert "data.batch_size" in str(e.value) and "'big'" in str(e.value)
    with pytest.raises(ConfigError, match="distill.train"):
        config_from_dict({"distill": {"train": 3}})


def test_bad_values_are_rejected() -> None:
    with pytest.raises(ConfigError, match="distill.alpha"):
        config_from_dict({"distill": {"alpha": 1.5}})
    with pytest.raises(ConfigError, match="teacher_train.optimizer"):
        config_from_dict({"teacher_train": {"optimizer": "lbfgs"}})
    with pytest.raises(ConfigError, match="opset"):
        config_from_dict({"export": {"opset": 13}})
    with pytest.raises(ConfigError, match="unknown stage 'deploy'"):
        config_from_dict({"stages": ["teacher", "deploy"]})


def test_cached_teacher_logits_refuse_geometric_augmentation_only() -> None:
    """Crop/flip change the teacher's view (its cached logits would be stale); noise and corruptions go to
    the student's view only, so they may run beside a cache."""
    with pytest.raises(ConfigError, match="cache_teacher_logits.*crop_padding / hflip"):
        config_from_dict({"distill": {"cache_teacher_logits": True}})  # the default augment crops and flips
    cfg = config_from_dict({"distill": {"cache_teacher_logits": True},
                            "data": {"augment": {"crop_padding": 0, "hflip": False}}})
    assert cfg.distill.cache_teacher_logits
    cfg = config_from_dict({"distill": {"cache_teacher_logits": True}, "data": {"augment": {
        "crop_padding": 0, "hflip": False, "corruption_prob": 0.5, "noise_std": 0.05}}})
    assert cfg.distill.cache_teacher_logits and cfg.data.augment.corruption_prob == 0.5


def test_overrides_parse_yaml_values_and_fractions() -> None:
    assert parse_override("distill.temperature=2") == {"distill": {"temperature": 2}}
    cfg = config_from_dict({}, ["distill.temperature=2", "check.robustness.epsilons=[8/255, 0.1]",
                                "teacher_train.amp=off"])
    assert cfg.distill.temperature == 2.0 and isinstance(cfg.distill.temperature, float)
    assert cfg.check.robustness.epsilons == pytest.approx([8 / 255, 0.1])
    assert cfg.teacher_train.amp == "off"  # YAML reads bare off as False; the switch keeps its spelling
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("distill.temperature")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name and cfg.hash() == load_config(path).hash()


def test_missing_and_malformed_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"], ids=["empty", "blank", "comment"])
def test_empty_config_file_is_an_error_not_the_default_run(tmp_path: Path, text: str) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    with pytest.raises(ConfigError, match=f"config file {empty} is empty") as e:
        load_config(empty)
    assert "smoke" in str(e.value)  # the fix names the built-in configs


@pytest.mark.parametrize("text", ["- a\n- b\n", "42\n", "just words\n"])
def test_non_mapping_config_file_is_an_error(tmp_path: Path, text: str) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_dict([1, 2])  # type: ignore[arg-type]


def test_config_hash_tracks_sections() -> None:
    a = config_from_dict({})
    b = config_from_dict({}, ["distill.temperature=2"])
    assert a.hash("teacher", "teacher_train") == b.hash("teacher", "teacher_train")
    assert a.hash("distill") != b.hash("distill")


def test_registry_miss_lists_valid_names() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("b")(2)
    reg.register("a")(1)
    assert reg.get("a") == 1 and reg.names() == ["a", "b"]
    with pytest.raises(ConfigError, match="unknown widget 'c'; valid: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(3)


# ------------------------------------------------------------ one validation at load (issues 7.7, 8)


@pytest.mark.parametrize("override, key, valid", [
    ("distill.loss=dkd9", "distill.loss", "hinton"),
    ("teacher.arch=resnet19", "teacher.arch", "resnet18"),
    ("student.arch=mobilenet_v4", "student.arch", "mobilenet_v2"),
    ("data.dataset=mnist", "data.dataset", "fashion_mnist"),
    ("check.robustness.corruptions=[gaussian_noise, fog]", "check.robustness.corruptions[1]", "gaussian_noise"),
    ("data.augment.corruptions=[rotate, fog]", "data.augment.corruptions[1]", "jpeg"),
    ("check.robustness.ood=[uniform, svhn]", "check.robustness.ood[1]", "blobs"),
    ("distill.robust.attack=cw", "distill.robust.attack", "fgsm_rs"),
    ("distill.train.optimizer=lbfgs", "distill.train.optimizer", "adamw"),
    ("qat.train.schedule=step", "qat.train.schedule", "onecycle"),
    ("teacher_train.amp=fp8", "teacher_train.amp", "auto"),
    ("distill.train.channels_last=maybe", "distill.train.channels_last", "auto"),
    ("device=tpu", "device", "cuda"),
])
def test_every_registry_name_and_switch_is_checked_at_load(override: str, key: str, valid: str) -> None:
    """A typo fails at load, naming the key, the bad value and the valid choices."""
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, [override])
    msg = str(e.value)
    bad = override.split("=", 1)[1].strip("[]").split(", ")[-1]
    assert f"'{key}'" in msg and repr(bad) in msg and "valid:" in msg and valid in msg and "fix:" in msg


def test_registry_names_are_the_registries_own() -> None:
    """Valid names come from the registries: every registered name passes, so a new one needs no edit here."""
    from edgekd.data import DATASETS
    from edgekd.losses import KD_LOSSES
    from edgekd.models import STUDENTS, TEACHERS
    from edgekd.robustness import CORRUPTIONS, OOD_SETS
    from edgekd.robustness.attacks import ATTACKS

    for name in KD_LOSSES.names():
        config_from_dict({"distill": {"loss": name}})
    for name in TEACHERS.names():
        config_from_dict({"teacher": {"arch": name}})
    for name in STUDENTS.names():
        config_from_dict({"student": {"arch": name}})
    for name in ATTACKS.names():
        config_from_dict({"distill": {"robust": {"attack": name}}})
    config_from_dict({"check": {"robustness": {"corruptions": CORRUPTIONS.names(), "ood_folder": "/tmp",
                                               "ood": OOD_SETS.names()}}})
    for name in DATASETS.names():
        config_from_dict({"data": {"dataset": name}})


def test_source_declared_names_equal_the_live_registries() -> None:
    """Before torch is imported, the torch-side names are read from the source; they must be the same set."""
    import importlib

    from edgekd.registry import declared_names
    from edgekd.validation import PACKAGE, TORCH_REGISTRIES

    for key, spec in TORCH_REGISTRIES.items():
        live = getattr(importlib.import_module(spec.module), spec.attr).names()
        static = sorted(declared_names(sorted(PACKAGE.glob(spec.sources)), spec.registrars))
        assert static == live, key


def test_a_typo_fails_fast_without_importing_torch(tmp_path: Path) -> None:
    """In a fresh process a registry typo fails without the multi-second torch import (checked by what is
    imported, not by a clock: timing on a shared CPU is no test)."""
    code = ("import sys\n"
            "from edgekd.config import load_config\n"
            "from edgekd.errors import ConfigError\n"
            "try:\n"
            "    load_config('smoke', ['distill.loss=dkd9'])\n"
            "except ConfigError as e:\n"
            "    print('torch' in sys.modules, 'hinton' in str(e))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_a_name_registered_at_run_time_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugins register after importing the registry's module, so the live registry is what counts then."""
    from edgekd.losses import KD_LOSSES

    with pytest.raises(ConfigError, match="unknown kd loss 'mine'"):
        config_from_dict({"distill": {"loss": "mine"}})
    monkeypatch.setitem(KD_LOSSES._items, "mine", lambda cfg: None)
    assert config_from_dict({"distill": {"loss": "mine"}}).distill.loss == "mine"


@pytest.mark.parametrize("override, key", [
    ("data.batch_size=0", "data.batch_size"),
    ("data.eval_batch_size=-1", "data.eval_batch_size"),
    ("data.val_size=0", "data.val_size"),
    ("data.train_subset=0", "data.train_subset"),
    ("data.test_subset=-5", "data.test_subset"),
    ("data.augment.corruption_prob=1.5", "data.augment.corruption_prob"),
    ("data.augment.corruption_max_severity=6", "data.augment.corruption_max_severity"),
    ("teacher_train.epochs=-1", "teacher_train.epochs"),
    ("distill.train.lr=0", "distill.train.lr"),
    ("qat.train.lr=-0.1", "qat.train.lr"),
    ("teacher_train.lr=.nan", "teacher_train.lr"),
    ("teacher_train.lr=.inf", "teacher_train.lr"),
    ("distill.train.warmup_fraction=1.0", "distill.train.warmup_fraction"),
    ("distill.temperature=0", "distill.temperature"),
    ("distill.temperature=-2", "distill.temperature"),
    ("distill.alpha=1.5", "distill.alpha"),
    ("distill.alpha=-0.1", "distill.alpha"),
    ("distill.robust.epsilon=2", "distill.robust.epsilon"),
    ("student.width=0", "student.width"),
    ("check.robustness.severities=[1, 6]", "check.robustness.severities[1]"),
    ("check.robustness.severities=[0]", "check.robustness.severities[0]"),
    ("check.robustness.epsilons=[0.1, 1.5]", "check.robustness.epsilons[1]"),
    ("check.robustness.images=0", "check.robustness.images"),
    ("check.robustness.adversarial_images=0", "check.robustness.adversarial_images"),
    ("check.latency.runs=0", "check.latency.runs"),
    ("check.latency.batch_sizes=[1, 0]", "check.latency.batch_sizes[1]"),
    ("export.parity_images=0", "export.parity_images"),
    ("export.opset=13", "export.opset"),
    ("seed=-1", "seed"),
    ("num_threads=0", "num_threads"),
    ("budgets.max_size_mb=-1", "budgets.max_size_mb"),
    ("budgets.max_size_mb=0", "budgets.max_size_mb"),
    ("budgets.max_size_mb=.nan", "budgets.max_size_mb"),
    ("budgets.min_accuracy=150", "budgets.min_accuracy"),
    ("budgets.min_accuracy=-0.5", "budgets.min_accuracy"),
    ("budgets.max_accuracy_drop=2", "budgets.max_accuracy_drop"),
    ("budgets.min_corruption_accuracy=1.01", "budgets.min_corruption_accuracy"),
    ("budgets.min_adversarial_accuracy=-1", "budgets.min_adversarial_accuracy"),
    ("budgets.max_latency_ms={value_ms: -5}", "budgets.max_latency_ms.value_ms"),
    ("budgets.max_latency_ms={value_ms: 5, batch: 0}", "budgets.max_latency_ms.batch"),
])
def test_ranges_are_checked_at_load(override: str, key: str) -> None:
    """Every bad value fails at load with the key, the value and a fix, before any training."""
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, [override])
    msg = str(e.value)
    assert f"'{key}'" in msg and "must be" in msg and "fix:" in msg, msg


def test_bounds_themselves_are_valid() -> None:
    cfg = config_from_dict({}, ["data.batch_size=1", "teacher_train.epochs=0", "distill.alpha=0", "distill.alpha=1",
                                "check.robustness.severities=[1, 5]", "check.robustness.epsilons=[0, 1]",
                                "budgets.min_accuracy=0", "budgets.min_accuracy=1", "budgets.max_accuracy_drop=0",
                                "check.latency.threads=[0]", "check.robustness.square_queries=0"])
    assert cfg.data.batch_size == 1 and cfg.budgets.min_accuracy == 1.0


@pytest.mark.parametrize("budgets, flag", [
    (BudgetsConfig(min_accuracy=-0.5), "--min-accuracy"),
    (BudgetsConfig(min_accuracy=150), "--min-accuracy"),
    (BudgetsConfig(max_size_mb=-1), "--max-size-mb"),
    (BudgetsConfig(max_size_mb=float("nan")), "--max-size-mb"),
    (BudgetsConfig(max_size_mb=float("inf")), "--max-size-mb"),
    (BudgetsConfig(max_latency_ms=LatencyBudget(value_ms=-5)), "--max-latency-ms"),
    (BudgetsConfig(max_latency_ms=LatencyBudget(value_ms=5, threads=-1)), "--latency-threads"),
    (BudgetsConfig(adversarial_epsilon=float("nan")), "--adversarial-epsilon"),
])
def test_validate_budgets_names_key_flag_and_value(budgets: BudgetsConfig, flag: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate_budgets(budgets)
    assert flag in str(e.value) and "budgets." in str(e.value) and "fix:" in str(e.value)


def test_gate_flags_are_validated_as_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`edgekd gate RUN --min-accuracy -0.5` (and 150, -1, nan, -5 ms) is exit 2, not a budget FAIL (exit 1)."""
    from edgekd.deploy.gate import apply_overrides, main_gate
    from test_gate import make_run

    for bad in ({"min_accuracy": -0.5}, {"min_accuracy": 150.0}, {"max_size_mb": -1.0},
                {"max_size_mb": float("nan")}, {"max_latency_ms": LatencyBudget(value_ms=-5.0)}):
        with pytest.raises(ConfigError):
            apply_overrides(BudgetsConfig(), bad)
    run = make_run(tmp_path / "run")
    for flags in (["--min-accuracy", "-0.5"], ["--min-accuracy", "150"], ["--max-size-mb", "-1"],
                  ["--max-size-mb", "nan"], ["--max-latency-ms", "-5"]):
        assert main_gate([str(run), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert flags[0] in err and "must be" in err and "gate: FAIL" not in err


def test_budget_validation_keeps_the_gate_torch_free(tmp_path: Path) -> None:
    """Budgets-only loading (the gate's path) never imports torch or the training registries."""
    code = ("import sys; from edgekd.config import budgets_from_dict, load_config; "
            "budgets_from_dict({'min_accuracy': 0.5}); load_config('smoke', registries=False); "
            "print(sorted(m for m in ('torch', 'edgekd.losses', 'edgekd.models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------ built-in configs (issue 7.6)


def test_configs_ship_inside_the_package() -> None:
    import edgekd

    pkg = Path(edgekd.__file__).resolve().parent
    assert CONFIG_DIR.resolve().is_relative_to(pkg.resolve()) or CONFIG_DIR.parent == pkg
    assert DEFAULT_CONFIG.parent == CONFIG_DIR and DEFAULT_CONFIG.is_file()
    assert {"smoke", "fashion_mnist", "fashion_mnist_gpu", "cifar10", "image_folder"} <= set(builtin_configs())
    # the repository's configs/ (used by README and tests) is the same folder
    assert sorted(p.name for p in (REPO / "configs").glob("*.yaml")) == sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


def test_builtin_config_names_resolve_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config("smoke").name == load_config(CONFIG_DIR / "smoke.yaml").name
    assert load_config("smoke.yaml").hash() == load_config(CONFIG_DIR / "smoke.yaml").hash()
    assert load_config().hash() == load_config(DEFAULT_CONFIG).hash()
    local = tmp_path / "smoke.yaml"  # a local file of the same name wins over the built-in one
    local.write_text("name: mine\n")
    assert load_config("smoke.yaml").name == "mine"
    with pytest.raises(ConfigError) as e:
        load_config("smok")
    assert "not found: smok" in str(e.value) and "smoke" in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config("sub/smoke.yaml")  # a path with folders is a path, never a built-in name


def test_removed_key_says_it_was_removed() -> None:
    """qat.freeze_bn_epoch was declared but never read; an old config that sets it fails with why, not silently."""
    with pytest.raises(ConfigError, match="'qat.freeze_bn_epoch' was removed: it was never read"):
        config_from_dict({"qat": {"freeze_bn_epoch": 0}})

"""Config loading and validation: unknown keys name the valid ones, wrong types name the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgekd.config import CONFIG_DIR, config_from_dict, load_config, parse_override
from edgekd.errors import ConfigError
from edgekd.registry import Registry


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


def test_cached_teacher_logits_refuse_augmentation() -> None:
    with pytest.raises(ConfigError, match="cache_teacher_logits"):
        config_from_dict({"distill": {"cache_teacher_logits": True}})
    cfg = config_from_dict({"distill": {"cache_teacher_logits": True},
                            "data": {"augment": {"crop_padding": 0, "hflip": False}}})
    assert cfg.distill.cache_teacher_logits


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

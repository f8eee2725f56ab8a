"""docs/config-reference.md is generated from edgekd/config.py and fails here when the two drift apart."""
from __future__ import annotations

import re
from pathlib import Path

from edgekd.config import Config
from edgekd.config_doc import field_docs, main, reference_markdown, undocumented_keys

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "config-reference.md"
FIX = "regenerate it: .venv/bin/python -m edgekd.config_doc --write docs/config-reference.md"


def _leaf_keys(d: dict, prefix: str = "") -> set[str]:
    """Every key path of a config dict; a nested mapping is a section, and so is a key of its own."""
    out = set()
    for k, v in d.items():
        path = f"{prefix}{k}"
        out.add(path)
        if isinstance(v, dict):
            out |= _leaf_keys(v, path + ".")
    return out


def test_the_reference_page_is_what_the_config_generates() -> None:
    assert PAGE.read_text() == reference_markdown(), f"docs/config-reference.md is out of date: {FIX}"


def test_every_config_key_is_on_the_page_with_its_own_default() -> None:
    text = reference_markdown()
    rows = dict(re.findall(r"^\| `([\w.]+)` \| [^|]+ \| `([^`]*)` \|", text, flags=re.M))
    expected = _leaf_keys(Config().to_dict())
    assert set(rows) == expected | {"budgets.max_latency_ms." + k for k in ("value_ms", "batch", "threads", "model")}
    # one dataclass, three sections: each shows the default of its own place in the config
    assert (rows["teacher_train.epochs"], rows["distill.train.epochs"], rows["qat.train.lr"]) == ("4", "5", "0.005")
    assert rows["student.arch"] == "mobilenet_v2" and rows["teacher.arch"] == "resnet18"
    assert rows["budgets.max_latency_ms"] == "null"  # optional section: null unless set
    assert rows["check.robustness.epsilons"] == "[0.00784314, 0.0313725, 0.1]"


def test_every_key_says_what_it_does() -> None:
    missing = undocumented_keys()
    assert not missing, f"config keys without a comment in edgekd/config.py: {missing}; add one, then {FIX}"


def test_comments_above_and_beside_a_field_are_its_description() -> None:
    source = '''
class Demo:
    """Doc."""

    plain: int = 1
    beside: int = 2  # said beside
    # said above,
    # on two lines
    above: int = 3  # and beside
    spread: list = field(
        default_factory=list  # inside the default
    )
'''
    docs = field_docs(source)
    assert docs[("Demo", "plain")] == ""
    assert docs[("Demo", "beside")] == "said beside"
    assert docs[("Demo", "above")] == "said above, on two lines and beside"
    assert docs[("Demo", "spread")] == "inside the default"


def test_check_mode_fails_on_a_stale_page_and_write_fixes_it(tmp_path: Path, capsys) -> None:
    page = tmp_path / "ref.md"
    page.write_text(reference_markdown().replace("passes over the training set", "stale", 1))
    assert main(["--check", str(page)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["--write", str(page)]) == 0
    assert main(["--check", str(page)]) == 0
    assert main(["--bogus"]) == 2

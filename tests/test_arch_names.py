"""edgekd.arch_names: the torch-free catalogues of outside model names match the libraries' own lists."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from edgekd import arch_names
from edgekd.errors import ConfigError


def test_torchvision_catalog_from_source_matches_list_models() -> None:
    from torchvision import models as tvm

    from_source = arch_names._source_catalog("torchvision", "models")
    assert from_source == frozenset(tvm.list_models(module=tvm)) and "resnet18" in from_source


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed (pip install 'edgekd[timm]')")
def test_timm_catalog_from_source_matches_list_models() -> None:
    import timm

    from_source = arch_names._source_catalog("timm", "models")
    assert from_source == frozenset(timm.list_models()) and "mobilenetv4_conv_small" in from_source


def test_checking_an_outside_name_does_not_import_torch() -> None:
    """A config naming torchvision:/timm: models is checked at load in well under the torch import."""
    code = ("import sys; from edgekd.config import config_from_dict; "
            "config_from_dict({'teacher': {'arch': 'torchvision:resnet18'}}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_split_and_errors() -> None:
    assert arch_names.split_arch("timm:lcnet_050") == ("timm", "lcnet_050")
    assert arch_names.split_arch("resnet18") == (None, "resnet18")
    arch_names.check_arch("k", "resnet9000")  # built-in names are the registries' business
    with pytest.raises(ConfigError, match=r"no name after 'timm:'"):
        arch_names.check_arch("student.arch", "timm:")
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'mobilenet_v3_smal'.*mobilenet_v3_small"):
        arch_names.check_arch("student.arch", "torchvision:mobilenet_v3_smal")

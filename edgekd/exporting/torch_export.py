"""The one call into ``torch.onnx.export``.

We use the TorchScript exporter (``dynamo=False``): in this torch 2.14 environment the dynamo
exporter needs ``onnxscript``, which is not installed (and not a dependency we want for CI),
while the TorchScript path exports ``torch.fake_quantize_per_{tensor,channel}_affine`` directly
to QuantizeLinear/DequantizeLinear with the module's buffers as initializers (the learned
scales keep their names), folds constants, and handles a dynamic batch axis via
``dynamic_axes``. One exporter for fp32 and QDQ keeps the two files structurally alike.
"""
from __future__ import annotations

import copy
import io
import warnings
from typing import Sequence

import onnx
import torch

from ..errors import ArtifactError
from ..deploy.onnx_io import unique_node_names

INPUT_NAME, OUTPUT_NAME = "pixels", "logits"


def sample_input(sample: "Sequence[int] | torch.Tensor") -> torch.Tensor:
    """A CPU float32 sample: a tensor as given, or uniform [0, 1] pixels of shape ``sample``."""
    if isinstance(sample, torch.Tensor):
        return sample.detach().float().cpu()
    shape = tuple(int(s) for s in sample)
    if len(shape) != 4:
        raise ArtifactError(f"sample shape {shape} is not NCHW", "pass (1, C, H, W)")
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


def to_onnx(model: torch.nn.Module, sample: "Sequence[int] | torch.Tensor", opset: int = 17) -> onnx.ModelProto:
    """Export a CPU copy of ``model`` (eval mode): input "pixels" NCHW, output "logits", dynamic batch."""
    cpu_model = copy.deepcopy(model).cpu().eval()
    x = sample_input(sample)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of dynamo (see module docstring)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        with torch.no_grad():
            torch.onnx.export(
                cpu_model, (x,), buf, dynamo=False, opset_version=opset, do_constant_folding=True,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    model = onnx.load_from_string(buf.getvalue())
    # The TorchScript exporter names a node "<scope>/<Op>" with the scope taken from the module's
    # *unqualified* name (torch.onnx.utils._unqualified_variable_name: "features.2.conv.0.0" ->
    # "conv.0.0"); in an fx-rewritten QAT model every layer is called straight from the GraphModule,
    # so many scopes share a base name and uniqueness hangs on the exporter's de-duplication alone.
    # ONNX requires unique names and onnxruntime refuses duplicates, so make sure of it here.
    unique_node_names(model)
    return model

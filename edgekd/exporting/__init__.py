"""ONNX export (fp32 and int8 QDQ), checks, simplification, parity and the divergence finder."""
from .divergence import find_divergence
from .export import default_metadata, export_fp32, export_int8
from ..deploy.onnx_io import check_onnx_model, get_metadata, load_model, op_counts
from .parity import parity_fp32, parity_int8
from .simplify import simplify

__all__ = ["check_onnx_model", "default_metadata", "export_fp32", "export_int8", "find_divergence", "get_metadata",
           "load_model", "op_counts", "parity_fp32", "parity_int8", "simplify"]

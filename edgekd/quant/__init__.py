"""INT8 quantization-aware training: BN folding, per-channel int8 weights, uint8 activations.

Fake quant is written with ``torch.fake_quantize_*`` so the model exports to ONNX QDQ that
onnxruntime fuses into int8 kernels, carrying the scales learned here.
"""
from .modules import QConv2d, QLinear, fold_bn
from .observers import ActFakeQuant, fake_quant_weight, weight_scale
from .qat_model import QATModel, calibrate, calibrating, freeze_observers, prepare_qat

__all__ = [
    "ActFakeQuant", "QATModel", "QConv2d", "QLinear", "calibrate", "calibrating", "fake_quant_weight",
    "fold_bn", "freeze_observers", "prepare_qat", "weight_scale",
]

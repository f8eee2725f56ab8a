"""The deployment side: everything that runs an exported ONNX model and needs no torch.

``runtime`` (onnxruntime sessions, accuracy, latency, profiling, checks), ``gate`` (budgets),
``doctor`` (INT8 speed diagnosis), ``report`` (the run's report) and ``onnx_io`` (the one ONNX
model loader and graph helpers). Modules here import numpy, onnx, onnxruntime, PyYAML and the
ground floor (``edgekd.config``, ``edgekd.errors``, ...), never torch: tests/test_torch_free.py
walks their imports. This file imports nothing, so ``edgekd.deploy.gate`` loads only what it needs.
"""

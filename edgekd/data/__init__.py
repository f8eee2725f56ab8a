"""Datasets behind one interface (numpy only; the torch loader is ``edgekd.data.loader``).

Importing this package registers the built-in readers in ``DATASETS``: ``fashion_mnist``,
``cifar10``, ``cifar100`` and ``image_folder``. A new dataset is one module with a ``@DATASETS.register(name)``
function ``fn(cfg: DataConfig) -> (train, test, classes, mean, std)``, imported here.
"""
from __future__ import annotations

from . import cifar, fashion_mnist, image_folder  # noqa: F401 - registration side effect
from .base import DATASETS, DatasetBundle, Split, build_dataset, stratified_indices

__all__ = ["DATASETS", "DatasetBundle", "Split", "build_dataset", "stratified_indices"]

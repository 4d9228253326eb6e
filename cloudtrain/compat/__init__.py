"""Which NVIDIA driver, CUDA toolkit, cuDNN and framework wheel fit together on a GPU and an OS.

`resolve()` turns a GPU, an OS, a framework request and what a node already has into one
consistent `Resolution`, or raises BadInput with the reason and a way out. The tables it
reads are package data (data/*.json) with their sources.
"""

from cloudtrain.compat.resolve import Resolution, resolve
from cloudtrain.compat.stack import Node
from cloudtrain.compat.tables import Gpu, identify

__all__ = ["Gpu", "Node", "Resolution", "identify", "resolve"]

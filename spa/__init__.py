"""spa — structured pruning of neural networks at the ONNX graph level.

Public API::

    import spa
    result = spa.prune("model.onnx", ratio=0.5)
    result.save("model.pruned.onnx")
"""

from __future__ import annotations

from spa.analysis.groups import Analysis, Group
from spa.api import PruneResult, analyze, bench, load, prune, recover, verify
from spa.errors import SpaError
from spa.version import __version__

__all__ = ["Analysis", "Group", "PruneResult", "SpaError", "__version__", "analyze", "bench", "load", "prune",
           "recover", "verify"]

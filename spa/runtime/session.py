"""The one ONNX Runtime session factory of spa.

Every ``onnxruntime.InferenceSession`` spa creates comes from :func:`session`: the execution providers
(the CPU unless told otherwise), ``threads`` intra-op threads and one inter-op thread, sequential
execution, ONNX Runtime's default graph optimisations unless told otherwise, optional profiling, and
models above the 2 GB protobuf limit written to a temporary folder with external data first.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import onnx
import onnxruntime as ort

from spa.errors import ValidationError
from spa.graph.io import PROTOBUF_LIMIT, model_size_bytes, save_model

__all__ = ["ModelLike", "session"]

ModelLike = onnx.ModelProto | str | os.PathLike[str]


def session(model: ModelLike, providers: Sequence[str] | None = None, *, threads: int = 1,
            inter_op_threads: int = 1, optimization: ort.GraphOptimizationLevel | None = None,
            profile_prefix: str | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session for ``model`` (a ModelProto or a path).

    Args:
        model: the model; a ModelProto above 2 GB is saved with external data to a temporary folder.
        providers: execution providers in order of preference (default: the CPU only).
        threads: intra-op threads (0 = ONNX Runtime's default).
        inter_op_threads: inter-op threads.
        optimization: graph optimisation level (None = ONNX Runtime's default, all optimisations).
        profile_prefix: turn ONNX Runtime's profiler on, writing to files with this prefix.

    Raises:
        ValidationError: ONNX Runtime cannot load the model.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if optimization is not None:
        opts.graph_optimization_level = optimization
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    chosen = list(providers or ["CPUExecutionProvider"])
    try:
        if isinstance(model, onnx.ModelProto):
            if model_size_bytes(model) > PROTOBUF_LIMIT:
                path = os.path.join(tempfile.mkdtemp(prefix="spa_"), "model.onnx")
                save_model(model, path, external_data=True)
                return ort.InferenceSession(path, opts, providers=chosen)
            return ort.InferenceSession(model.SerializeToString(), opts, providers=chosen)
        return ort.InferenceSession(str(model), opts, providers=chosen)
    except Exception as exc:
        raise ValidationError(f"ONNX Runtime cannot load the model: {str(exc).splitlines()[0]}") from exc

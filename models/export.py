"""Export zoo models to self-contained ONNX files and verify them against PyTorch.

Two exporters are supported:

* ``"legacy"`` - TorchScript-based ``torch.onnx.export(..., dynamo=False)``,
  default opset 13.  In eval mode it folds BatchNorm into the preceding
  Conv; ``keep_bn=True`` exports with ``training=TrainingMode.PRESERVE``
  (model in eval mode), which keeps ``BatchNormalization`` nodes (inference
  form, one output) while still constant-folding shape computations.
  (``do_constant_folding=False`` also keeps BN but leaves every Reshape
  shape as an ``Unsqueeze``/``Concat`` chain, so it is not used.)
* ``"dynamo"`` - ``torch.export``-based ``torch.onnx.export(..., dynamo=True)``,
  opset >= 18 (default 18).  Its onnxscript optimizer fuses BN into Conv
  (rewrite rules ``FuseBatchNormInto{Conv,ConvTranspose,Gemm}``);
  ``keep_bn=True`` exports unoptimised and runs the same optimizer with
  those rules removed.

The file is always written without external data and with
``ir_version <= 10`` (ONNX Runtime 1.31 rejects newer IR versions).

CLI: ``python -m models.export NAME OUT.onnx --exporter legacy|dynamo [--large]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence
from unittest import mock

import numpy as np
import onnx
import torch
from torch import nn

MAX_IR_VERSION = 10
DEFAULT_ATOL = 1e-4
INPUT_NAME = "input"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter warnings and progress prints (stdout) for the duration."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Run ``model`` and flatten its result (tensor or tuple/list of tensors)."""
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _output_names(n: int) -> list[str]:
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def _example_input(input_shape: Sequence[int], dynamic_batch: bool, seed: int = 0) -> torch.Tensor:
    shape = list(input_shape)
    if dynamic_batch and shape[0] == 1:
        shape[0] = 2  # torch.export specialises size-1 dims; trace with batch 2
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen)


def _export_legacy(
    model: nn.Module, x: torch.Tensor, out_names: list[str], opset: int, keep_bn: bool, dynamic_batch: bool
) -> onnx.ModelProto:
    kwargs: dict[str, Any] = {}
    if keep_bn:
        kwargs["training"] = torch.onnx.TrainingMode.PRESERVE  # model is in eval mode
    if dynamic_batch:
        kwargs["dynamic_axes"] = {name: {0: "batch"} for name in [INPUT_NAME, *out_names]}
    buf = io.BytesIO()
    with _quiet():
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=out_names,
            **kwargs,
        )
    return onnx.load_from_string(buf.getvalue())


_TORCHLIB_REGISTRIES: dict[str, Any] = {}


@contextlib.contextmanager
def _cached_torchlib_registry() -> Iterator[None]:
    """Reuse the dynamo exporter's torchlib op registry across exports.

    ``torch.onnx.export(dynamo=True)`` rebuilds ``ONNXRegistry.from_torchlib()``
    (~1.3 s of onnxscript function compilation) on every call; caching it per
    opset roughly halves the export time of the tiny zoo models.  The
    registry is only mutated for ``custom_translation_table``, which this
    module never passes.  Falls back to no caching if torch internals move.
    """
    try:
        from torch.onnx._internal.exporter import _registration

        original = _registration.ONNXRegistry.from_torchlib
    except (ImportError, AttributeError):
        yield
        return

    def cached(cls: type, *args: Any, **kwargs: Any) -> Any:
        key = repr((args, sorted(kwargs.items())))
        if key not in _TORCHLIB_REGISTRIES:
            _TORCHLIB_REGISTRIES[key] = original(*args, **kwargs)
        return _TORCHLIB_REGISTRIES[key]

    with mock.patch.object(_registration.ONNXRegistry, "from_torchlib", classmethod(cached)):
        yield


def _optimize_keep_bn(ir_model: Any) -> None:
    """Run the exporter's onnxscript optimizer without the BatchNorm-fusion rewrite rules."""
    from onnxscript import optimizer, rewriter

    rules = tuple(
        r
        for r in rewriter._DEFAULT_REWRITE_RULES
        if not str(getattr(r, "name", "")).startswith("FuseBatchNorm")
    )
    with mock.patch.object(rewriter, "_DEFAULT_REWRITE_RULES", rules):
        optimizer.optimize_ir(ir_model)


def _export_dynamo(
    model: nn.Module, x: torch.Tensor, out_names: list[str], opset: int, keep_bn: bool, dynamic_batch: bool
) -> onnx.ModelProto:
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    with _quiet(), _cached_torchlib_registry():
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=out_names,
            optimize=not keep_bn,
            verbose=False,
            report=False,
            **kwargs,
        )
        assert program is not None
        if keep_bn:
            _optimize_keep_bn(program.model)
        return program.model_proto


def _finalize(proto: onnx.ModelProto, path: Path) -> None:
    """Cap the IR version and write one self-contained file (no external data).

    Both exporters hand back an in-memory proto (the dynamo path uses
    ``ONNXProgram.model_proto`` instead of ``ONNXProgram.save``, which may
    write a sidecar ``.data`` file), so all weights are inline here.
    """
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise RuntimeError("exported proto references external data; cannot inline it")
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path), save_as_external_data=False)


def export_onnx(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str | Path,
    *,
    exporter: Literal["legacy", "dynamo"],
    opset: int | None = None,
    keep_bn: bool = True,
    dynamic_batch: bool = False,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
) -> Path:
    """Export ``model`` (switched to eval mode) to a single self-contained ``.onnx`` file.

    Args:
        model: the PyTorch module; single tensor input of ``input_shape``.
        input_shape: static input shape, batch first (batch 1 for the zoo).
        path: destination file.
        exporter: ``"legacy"`` (TorchScript, default opset 13) or ``"dynamo"``
            (torch.export, default and minimum opset 18).
        opset: ONNX opset to target.
        keep_bn: keep ``BatchNormalization`` nodes; ``False`` lets the
            exporter fold BN into the preceding Conv/Gemm where it can.
        dynamic_batch: mark dim 0 of the input and outputs as ``"batch"``.
        verify: run ``onnx.checker.check_model(full_check=True)`` and compare
            ONNX Runtime with torch; raise ``AssertionError`` if outputs differ
            by more than ``atol * max(1, max|torch output|)`` (relative for
            large outputs: deep nets accumulate ~1e-5 relative float32 error).

    Inputs are named ``"input"``; outputs ``"output"`` or ``"output_0"``, ...

    Returns:
        The path written.
    """
    if exporter not in ("legacy", "dynamo"):
        raise ValueError(f"exporter must be 'legacy' or 'dynamo', got {exporter!r}")
    if opset is None:
        opset = 13 if exporter == "legacy" else 18
    if exporter == "dynamo" and opset < 18:
        raise ValueError("the dynamo exporter needs opset >= 18")
    path = Path(path)
    model.eval()
    x = _example_input(input_shape, dynamic_batch)
    out_names = _output_names(len(_outputs(model, x)))
    if exporter == "legacy":
        proto = _export_legacy(model, x, out_names, opset, keep_bn, dynamic_batch)
    else:
        proto = _export_dynamo(model, x, out_names, opset, keep_bn, dynamic_batch)
    _finalize(proto, path)
    if verify:
        onnx.checker.check_model(str(path), full_check=True)
        diff, scale = _compare(model, path, input_shape, seed=1)
        tol = atol * max(1.0, scale)
        if not diff <= tol:
            raise AssertionError(f"ONNX output differs from torch by {diff:.3g} > {tol:.3g} ({path})")
    return path


def _compare(
    model: nn.Module, path: str | Path, input_shape: Sequence[int], seed: int
) -> tuple[float, float]:
    """Return ``(max abs diff, max abs torch output)`` between ORT(``path``) and ``model``."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(input_shape), generator=gen)
    expected = [t.detach().numpy() for t in _outputs(model.eval(), x)]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1  # tiny graphs: avoid spinning thread pools
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    scale = max((float(np.max(np.abs(e))) for e in expected if e.size), default=0.0)
    if len(got) != len(expected):
        return float("inf"), scale
    diff = 0.0
    for e, g in zip(expected, got):
        if e.shape != g.shape:
            return float("inf"), scale
        if e.size:
            diff = max(diff, float(np.max(np.abs(e - g))))
    return diff, scale


def check_export(model: nn.Module, path: str | Path, input_shape: Sequence[int], seed: int = 1) -> float:
    """Check ``path`` with :func:`onnx.checker.check_model`, then compare ORT (CPU) with torch.

    Both run on the same seeded ``N(0, 1)`` input of ``input_shape``.
    Returns the maximum absolute difference over all outputs (``inf`` if the
    number or shapes of outputs differ).
    """
    onnx.checker.check_model(str(path))
    return _compare(model, path, input_shape, seed)[0]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: export one registered model."""
    from models.registry import LARGE_MODELS, TINY_MODELS, get_model

    parser = argparse.ArgumentParser(prog="python -m models.export", description=__doc__.split("\n")[0])
    parser.add_argument("name", help=f"tiny: {sorted(TINY_MODELS)}; large: {sorted(LARGE_MODELS)}")
    parser.add_argument("out", type=Path, help="output .onnx path")
    parser.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy")
    parser.add_argument("--large", action="store_true", help="look NAME up in LARGE_MODELS")
    parser.add_argument("--opset", type=int, default=None)
    parser.add_argument("--fold-bn", action="store_true", help="let the exporter fold BN into Conv")
    parser.add_argument("--dynamic-batch", action="store_true")
    parser.add_argument("--no-verify", action="store_true")
    args = parser.parse_args(argv)
    model, shape = get_model(args.name, large=args.large)
    path = export_onnx(
        model,
        shape,
        args.out,
        exporter=args.exporter,
        opset=args.opset,
        keep_bn=not args.fold_bn,
        dynamic_batch=args.dynamic_batch,
        verify=not args.no_verify,
    )
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.2f} MiB, input {tuple(shape)}, exporter {args.exporter})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

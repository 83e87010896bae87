"""Export every tiny zoo model with both exporters and check ONNX Runtime matches torch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from models.export import check_export, export_onnx, main
from models.registry import TINY_MODELS

ATOL = 1e-4
EXPORTERS = ("legacy", "dynamo")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread() -> Iterator[None]:
    """Tiny models: torch's intra-op thread pool only adds spin time (~40% CPU) here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _op_counts(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _num_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


#: transformer entries (models/transformers.py): LayerNorm/RMSNorm instead of BatchNorm, BERT reads
#: float token features [1, 8, 32]
TRANSFORMERS = {"bert", "bert_fused_qkv", "vit", "swin", "convnext"}


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_tiny_model_is_small_and_deterministic(name: str) -> None:
    model, shape = TINY_MODELS[name]()
    assert not model.training
    assert shape[0] == 1 and ((shape[1] == 3 and shape[2] in (32, 64)) or name in TRANSFORMERS)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    again, _ = TINY_MODELS[name]()
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    if name in TRANSFORMERS:
        return
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns, "every zoo model has BatchNorm"
    assert not all(torch.allclose(m.running_mean, torch.zeros_like(m.running_mean)) for m in bns)
    again, _ = TINY_MODELS[name]()
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_export_matches_torch(name: str, exporter: str, zoo_export) -> None:  # type: ignore[no-untyped-def]
    model, shape = TINY_MODELS[name]()
    path = zoo_export(name, exporter)
    assert not list(path.parent.glob("*.data")), "no external-data sidecar files"
    proto = onnx.load(str(path))
    assert proto.ir_version <= 10
    onnx.checker.check_model(str(path), full_check=True)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == list(shape)
    # keep_bn=True (default): one BatchNormalization node per BatchNorm module.
    assert _op_counts(path)["BatchNormalization"] == _num_bn(model)
    assert check_export(model, path, shape) <= ATOL


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_legacy_fold_bn(name: str, zoo_export) -> None:  # type: ignore[no-untyped-def]
    """keep_bn=False folds every BN that is the sole consumer of a Conv output.

    BNs that survive (DenseNet pre-activation) read a Concat/AveragePool, or a
    Conv output that also feeds a Concat (the stem conv of the tiny DenseNet).
    """
    model, shape = TINY_MODELS[name]()
    path = zoo_export(name, "legacy", keep_bn=False)
    graph = onnx.load(str(path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    consumers = Counter(i for n in graph.node for i in n.input)
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            assert producer.get(node.input[0]) != "Conv" or consumers[node.input[0]] > 1
    if name != "densenet":
        assert _op_counts(path)["BatchNormalization"] == 0
    assert check_export(model, path, shape) <= ATOL


def test_dynamo_fold_bn(tmp_path: Path) -> None:
    model, shape = TINY_MODELS["resnet_basic"]()
    path = export_onnx(model, shape, tmp_path / "m.onnx", exporter="dynamo", keep_bn=False)
    assert _op_counts(path)["BatchNormalization"] == 0
    assert check_export(model, path, shape) <= ATOL


@pytest.mark.parametrize(
    ("name", "exporter"),
    # dynamo + shufflenetv2 works too but costs ~4 s of torch.export tracing.
    [("shufflenetv2", "legacy"), ("vgg", "legacy"), ("vgg", "dynamo")],
)
def test_dynamic_batch(name: str, exporter: str, tmp_path: Path) -> None:
    """Batch dim exported as ``"batch"``; legacy shufflenet Reshapes become Shape-computed."""
    model, shape = TINY_MODELS[name]()
    path = export_onnx(
        model, shape, tmp_path / "m.onnx", exporter=exporter, dynamic_batch=True  # type: ignore[arg-type]
    )
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert check_export(model, path, (3, *shape[1:])) <= ATOL


def test_dynamo_rejects_old_opset(tmp_path: Path) -> None:
    model, shape = TINY_MODELS["vgg"]()
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, shape, tmp_path / "m.onnx", exporter="dynamo", opset=13)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vgg.onnx"
    assert main(["vgg", str(out), "--exporter", "legacy"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out


def test_demo_model_is_current_and_valid() -> None:
    from models.make_demo import INPUT_SHAPE, build_demo_model

    path = REPO / "models" / "demo_cnn.onnx"
    assert path.is_file(), "run `python models/make_demo.py`"
    assert path.read_bytes() == build_demo_model().SerializeToString(), "demo_cnn.onnx is stale"
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 8 and proto.opset_import[0].version == 17
    ops = _op_counts(path)
    required = ("Conv", "BatchNormalization", "Relu", "Add", "Concat", "GlobalAveragePool", "Sigmoid", "Mul")
    for op in (*required, "Gemm"):
        assert ops[op] > 0, op
    assert any(
        a.name == "group" and a.i > 1 for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute
    ), "has a depthwise conv"
    size = sum(int(np.prod(t.dims)) * 4 for t in proto.graph.initializer)
    assert 1_000_000 <= size <= 3_000_000
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    (logits,) = sess.run(None, {"input": x})
    assert logits.shape == (1, 10) and np.isfinite(logits).all()

"""``spa recover``: the loss decreases on a pruned model, the graph's structure is unchanged, runs are
deterministic, resume continues an interrupted run exactly, and bad input is a one-line error with no output."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import spa
from spa.calibration import ArraySource
from spa.cli import main
from spa.errors import RecoverError, RecoverInterrupted, UsageError
from spa.graph.io import load_model, save_model
from spa.runtime.session import session

pytest.importorskip("torch")
from spa.recover.train import RecoverOptions, recover

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models/demo_cnn.onnx"


@pytest.fixture(scope="module")
def teacher() -> onnx.ModelProto:
    return load_model(DEMO)


@pytest.fixture(scope="module")
def student(teacher: onnx.ModelProto) -> onnx.ModelProto:
    return spa.prune(teacher, ratio=0.5, criterion="l2").model


def data(n: int = 16, seed: int = 0, shape: tuple[int, ...] = (3, 64, 64)) -> ArraySource:
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    return ArraySource({"input": x}, batch_size=8, name="toy")


def gap(model: onnx.ModelProto, teacher: onnx.ModelProto, x: np.ndarray) -> float:
    a, b = session(model), session(teacher)
    return float(np.mean([np.mean((a.run(None, {"input": x[i:i + 1]})[0] - b.run(None, {"input": x[i:i + 1]})[0]) ** 2)
                          for i in range(len(x))]))


def structure(model: onnx.ModelProto) -> tuple[object, ...]:
    g = model.graph
    return ([(n.op_type, n.name, n.domain, list(n.input), list(n.output), [a.SerializeToString() for a in n.attribute])
             for n in g.node],
            [i.SerializeToString() for i in g.input], [o.SerializeToString() for o in g.output],
            [(i.name, tuple(i.dims), i.data_type) for i in g.initializer],
            [(o.domain, o.version) for o in model.opset_import], model.ir_version)


@pytest.fixture(scope="module")
def recovered(student: onnx.ModelProto, teacher: onnx.ModelProto):  # type: ignore[no-untyped-def]
    return recover(student, teacher, data(), RecoverOptions(steps=30, batch=8, lr=2e-3))


def test_loss_decreases_and_the_student_gets_closer(recovered, student, teacher) -> None:  # type: ignore[no-untyped-def]
    losses = recovered.losses
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    x = np.random.default_rng(7).standard_normal((6, 3, 64, 64)).astype(np.float32)  # held out
    assert gap(recovered.model, teacher, x) < 0.7 * gap(student, teacher, x)
    assert recovered.loss_kinds == {"logits": "kl"}


def test_structure_unchanged_only_float_initializer_values(recovered, student) -> None:  # type: ignore[no-untyped-def]
    assert structure(recovered.model) == structure(student)
    changed = [a.name for a, b in zip(recovered.model.graph.initializer, student.graph.initializer)
               if not np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))]
    assert changed and all(i.data_type == onnx.TensorProto.FLOAT for i in student.graph.initializer
                           if i.name in changed)
    onnx.checker.check_model(recovered.model)


def test_same_seed_same_weights(student, teacher) -> None:  # type: ignore[no-untyped-def]
    opts = RecoverOptions(steps=3, batch=8, seed=3)
    a, b = recover(student, teacher, data(), opts), recover(student, teacher, data(), opts)
    assert [i.SerializeToString() for i in a.model.graph.initializer] == \
        [i.SerializeToString() for i in b.model.graph.initializer]


def test_resume_continues_an_interrupted_run(student, teacher, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ckpt = str(tmp_path / "run.ckpt")
    opts = RecoverOptions(steps=6, batch=8, checkpoint=ckpt, checkpoint_every=2)
    whole = recover(student, teacher, data(), opts)

    def interrupt(step: int, steps: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(RecoverInterrupted, match=r"interrupted at step 3 of 6; checkpoint .*--resume"):
        recover(student, teacher, data(), opts, progress=interrupt)
    resumed = recover(student, teacher, data(), RecoverOptions(**{**opts.__dict__, "resume": True}))
    assert resumed.start_step == 3 and len(resumed.losses) == 6
    np.testing.assert_allclose(resumed.losses, whole.losses, rtol=1e-5)
    for a, b in zip(resumed.model.graph.initializer, whole.model.graph.initializer):
        np.testing.assert_allclose(numpy_helper.to_array(a), numpy_helper.to_array(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError, match="another run"):  # other options: the checkpoint is refused
        recover(student, teacher, data(), RecoverOptions(steps=7, batch=8, checkpoint=ckpt, resume=True))


def test_nan_loss_stops_keeps_the_checkpoint(student, teacher, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(RecoverError, match=r"loss became NaN at step \d+; lower --lr .*last checkpoint") as err:
        recover(student, teacher, data(), RecoverOptions(steps=40, batch=8, lr=1e12, checkpoint=str(ckpt),
                                                          checkpoint_every=1))
    assert "\n" not in str(err.value) and ckpt.exists()


def test_mismatched_teacher(student) -> None:  # type: ignore[no-untyped-def]
    other = load_model(ROOT / "tests/fixtures/keras_cnn.onnx")
    with pytest.raises(UsageError, match=r"teacher and student have different inputs .*--teacher"):
        recover(student, other, data())


def test_data_of_the_wrong_shape(student, teacher) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=r"input 'input' has shape \[16, 3, 32, 32\]; expected \[samples, 3x64x64\]"):
        recover(student, teacher, data(shape=(3, 32, 32)))


def test_data_that_is_not_finite(student, teacher) -> None:  # type: ignore[no-untyped-def]
    x = np.full((8, 3, 64, 64), np.nan, np.float32)
    with pytest.raises(UsageError, match="not finite"):
        recover(student, teacher, ArraySource({"input": x}, batch_size=8))


def test_cli(student, teacher, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    pruned = tmp_path / "pruned.onnx"
    save_model(student, pruned)
    before = pruned.read_bytes()
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32))
    out = tmp_path / "rec.onnx"
    base = ["recover", str(pruned), "--teacher", str(DEMO), "--data", str(x), "-q"]
    assert main([*base, "-o", str(out), "--steps", "2", "--batch", "4"]) == 0
    assert out.exists() and pruned.read_bytes() == before and not Path(f"{out}.ckpt").exists()
    assert structure(load_model(out)) == structure(student)
    # bad input: one line, non-zero, nothing written
    capsys.readouterr()
    assert main([*base, "-o", str(pruned)]) == 1 and pruned.read_bytes() == before
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 3, 32, 32), np.float32))
    out2 = tmp_path / "rec2.onnx"
    assert main(["recover", str(pruned), "--teacher", str(DEMO), "--data", str(bad), "-o", str(out2), "-q"]) == 1
    assert main(["recover", str(pruned), "--teacher", str(ROOT / "tests/fixtures/keras_cnn.onnx"), "--data", str(x),
                 "-o", str(out2), "-q"]) == 1
    assert main([*base, "-o", str(out2), "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("spa: error:") for line in err)
    assert not out2.exists() and not list(tmp_path.glob(".rec2*"))


def test_api(student, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pruned = tmp_path / "p.onnx"
    save_model(student, pruned)
    res = spa.recover(pruned, DEMO, data(8), output=tmp_path / "r.onnx", steps=2, batch=4)
    assert (tmp_path / "r.onnx").exists() and res.to_json()["steps"] == 2
    with pytest.raises(UsageError, match="is an input"):
        spa.recover(pruned, DEMO, data(8), output=pruned, steps=1)


def test_labels_and_features(student, teacher, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    y = tmp_path / "y.npy"
    np.save(y, np.arange(16) % 10)
    res = recover(student, teacher, data(), RecoverOptions(steps=2, batch=8, labels=str(y), task_loss="ce",
                                                           features="auto"))
    assert len(res.losses) == 2 and all(np.isfinite(res.losses))
    with pytest.raises(UsageError, match="go together"):
        recover(student, teacher, data(), RecoverOptions(steps=1, labels=str(y)))
    np.save(y, np.linspace(0, 1, 16))
    with pytest.raises(UsageError, match="integer class labels"):
        recover(student, teacher, data(), RecoverOptions(steps=1, labels=str(y), task_loss="ce"))


def test_loss_kinds() -> None:
    import torch

    from spa.recover.train import _distill, _loss_kind

    logits = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    seg = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    assert _loss_kind(logits) == "kl" and _loss_kind(np.exp(logits) / np.exp(logits).sum(1, keepdims=True)) == "prob"
    assert _loss_kind(seg) == "mse" and _loss_kind(seg, dense=True) == "kl-dense"
    t = torch.from_numpy(seg)
    assert float(_distill("kl-dense", t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(_distill("kl-dense", t * 0, t, 2.0)) > 0


def _heldout_loss(model: onnx.ModelProto, teacher: onnx.ModelProto, x: np.ndarray) -> float:
    """The distillation loss (KL, temperature 2) of ``model`` against ``teacher`` on ``x``, in ONNX Runtime."""
    import torch

    from spa.recover.train import _distill

    s, t = (np.concatenate([session(m).run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
            for m in (model, teacher))
    return float(_distill("kl", torch.from_numpy(s), torch.from_numpy(t), 2.0))


def test_never_returns_a_model_worse_than_its_input_on_held_out_data(teacher) -> None:  # type: ignore[no-untyped-def]
    """At a learning rate that wrecks a good start, the returned model's held-out loss is still no worse than
    the input's (the selection keeps the input); without selection it is worse (so the test can fail)."""
    good = spa.prune(teacher, ratio=0.1, criterion="l2").model
    x = np.random.default_rng(0).standard_normal((20, 3, 64, 64)).astype(np.float32)
    src = ArraySource({"input": x}, batch_size=2, name="toy")  # 10 batches: the first one is held out
    wild: dict[str, Any] = {"steps": 6, "batch": 2, "lr": 0.05, "warmup": 0.0, "eval_every": 2}
    kept = recover(good, teacher, src, RecoverOptions(**wild))
    last = recover(good, teacher, src, RecoverOptions(**wild, keep_best=False))
    held = x[:2]
    assert kept.heldout_source.startswith("2 held-out samples")
    assert _heldout_loss(last.model, teacher, held) > _heldout_loss(good, teacher, held)
    assert _heldout_loss(kept.model, teacher, held) <= _heldout_loss(good, teacher, held) * (1 + 1e-4) + 1e-7
    assert kept.selected_step == min(kept.heldout, key=lambda kv: kv[1])[0]
    assert kept.heldout[0][0] == 0 and [k for k, _ in kept.heldout] == [0, 2, 4, 6]


def test_held_out_batches_are_never_trained_on(student, teacher) -> None:  # type: ignore[no-untyped-def]
    """The training loss curve is the same whatever the held-out batch holds; its held-out loss is not."""
    x = np.random.default_rng(0).standard_normal((10, 3, 64, 64)).astype(np.float32)
    y = x.copy()
    y[:2] = np.random.default_rng(1).standard_normal((2, 3, 64, 64))  # only the held-out batch differs
    opts = RecoverOptions(steps=3, batch=2, eval_every=100, holdout=0.2)
    a = recover(student, teacher, ArraySource({"input": x}, batch_size=2), opts)
    b = recover(student, teacher, ArraySource({"input": y}, batch_size=2), opts)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-6)
    assert a.heldout[0][1] != b.heldout[0][1]


def test_learning_rate_warms_up_then_decays() -> None:
    from spa.recover.train import holdout_batches, learning_rate

    opts = RecoverOptions(steps=100, lr=1.0, warmup=0.1)
    lrs = [learning_rate(opts, k) for k in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.5 * 0.5 * (1 + np.cos(np.pi * 0.04)))
    assert max(lrs) == lrs[9] and all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert learning_rate(RecoverOptions(steps=100, lr=1.0, warmup=0.0), 0) == 1.0
    assert holdout_batches(40, 4, 0.1) == 1 and holdout_batches(16, 8, 0.1) == 0
    assert holdout_batches(None, 8, 0.1) == 0
    with pytest.raises(UsageError, match="--warmup"):
        recover(None, None, None, RecoverOptions(warmup=1.5))  # type: ignore[arg-type]

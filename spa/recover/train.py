"""``spa recover``: train a pruned model's float initializers to match the original (distillation).

The teacher (the original ONNX) runs in ONNX Runtime, the student (the pruned ONNX) in torch through
:class:`~spa.recover.executor.GraphModule`. Loss per output: KL divergence with a temperature on
classification-like outputs (float ``[batch, classes]``; an output that already holds probabilities is
compared as probabilities), MSE divided by the teacher output's mean square otherwise; ``labels`` add a
supervised term on the first output (``ce`` or ``mse``). Adam with a linear warm-up over the first
``warmup`` fraction of the steps, then a cosine learning rate (Adam's first steps move every weight by about
``lr`` whatever its gradient: on a pruned model that is already close, a large step away from it). The data
(``--calib`` sources: ``.npz``, ``.npy``, image folders, ``random``) is streamed batch by batch and
cycled. Deterministic for a seed.

Model selection: the first ``holdout`` fraction of the data's batches (when the data has at least
:data:`MIN_HOLDOUT_BATCHES` batches; else its first batch, in-sample) is never trained on; the same loss on it
is measured before training and every ``eval_every`` steps, and the parameters with the lowest held-out
loss are returned (``keep_best``). So recover never returns a model whose held-out loss is worse than its
input's: distillation can overfit a few samples or, at too high a learning rate, leave a good start.

Checkpoints (atomic) every ``checkpoint_every`` steps and when interrupted; ``resume`` continues from one.
The result is the student graph node for node, only the trained initializers' values changed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from spa.calibration.load import load_calibration
from spa.calibration.runner import run_batches
from spa.errors import RecoverError, RecoverInterrupted, SpaError, UsageError
from spa.graph.io import atomic_path
from spa.recover.backend import torch
from spa.recover.executor import GraphModule
from spa.runtime.feeds import InputSpec, input_specs
from spa.runtime.session import session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoverOptions:
    """The options of one ``spa recover`` run (see the CLI help)."""

    steps: int = 300
    lr: float = 1e-3
    batch: int = 16
    samples: int | None = None
    temperature: float = 2.0
    labels: str | None = None
    task_loss: str | None = None
    task_weight: float = 1.0
    device: str = "auto"
    seed: int = 0
    checkpoint: str | None = None
    checkpoint_every: int = 50
    resume: bool = False
    features: str = "none"
    threads: int = 0
    dense_kl: bool = False
    warmup: float = 0.1
    holdout: float = 0.1
    eval_every: int = 25
    keep_best: bool = True

    def check(self) -> None:
        if self.steps < 1:
            raise UsageError(f"--steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if self.batch < 1:
            raise UsageError(f"--batch must be >= 1, got {self.batch}")
        if self.temperature <= 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 <= self.warmup < 1:
            raise UsageError(f"--warmup must be in [0, 1) (a fraction of the steps), got {self.warmup}")
        if not 0 <= self.holdout < 1:
            raise UsageError(f"--holdout must be in [0, 1) (a fraction of the data), got {self.holdout}")
        if self.eval_every < 1:
            raise UsageError(f"--eval-every must be >= 1, got {self.eval_every}")
        if self.checkpoint_every < 1:
            raise UsageError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.task_loss not in (None, "ce", "mse"):
            raise UsageError(f"--task-loss must be ce or mse, got {self.task_loss!r}")
        if (self.labels is None) != (self.task_loss is None):
            raise UsageError("--labels and --task-loss go together: give both (e.g. --labels y.npy --task-loss ce)")
        if self.features not in ("none", "auto"):
            raise UsageError(f"--features must be none or auto, got {self.features!r}")
        if self.resume and not self.checkpoint:
            raise UsageError("--resume needs a checkpoint path")


@dataclass
class RecoverResult:
    """The recovered model and how training went."""

    model: onnx.ModelProto
    losses: list[float]
    steps: int
    start_step: int
    device: str
    wall_s: float
    trainable: int
    loss_kinds: dict[str, str] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)
    heldout: list[tuple[int, float]] = field(default_factory=list)
    selected_step: int | None = None
    heldout_source: str = ""

    def to_json(self) -> dict[str, Any]:
        first = self.losses[:10]
        last = self.losses[-10:]
        return {"steps": self.steps, "start_step": self.start_step, "device": self.device,
                "wall_s": round(self.wall_s, 2), "trainable_initializers": self.trainable,
                "loss_kinds": self.loss_kinds, "features": self.features,
                "loss_first": float(np.mean(first)) if first else None,
                "loss_last": float(np.mean(last)) if last else None, "losses": self.losses,
                "heldout_losses": [[k, v] for k, v in self.heldout], "selected_step": self.selected_step,
                "heldout_source": self.heldout_source}


def _spec_text(s: InputSpec) -> str:
    return f"{s.name} {s.dtype} rank {len(s.shape)}"


def check_pair(student: onnx.ModelProto, teacher: onnx.ModelProto) -> None:
    """Raise :class:`UsageError` unless student and teacher have the same inputs and outputs."""
    si, ti = input_specs(student), input_specs(teacher)
    if [_spec_text(s) for s in si] != [_spec_text(s) for s in ti]:
        raise UsageError(
            f"teacher and student have different inputs (student: {', '.join(map(_spec_text, si))}; teacher: "
            f"{', '.join(map(_spec_text, ti))}); give as --teacher the model the student was pruned from")
    so = [(o.name, o.type.tensor_type.elem_type, len(o.type.tensor_type.shape.dim)) for o in student.graph.output]
    to = [(o.name, o.type.tensor_type.elem_type, len(o.type.tensor_type.shape.dim)) for o in teacher.graph.output]
    if so != to:
        raise UsageError(
            f"teacher and student have different outputs (student: {', '.join(n for n, *_ in so)}; teacher: "
            f"{', '.join(n for n, *_ in to)}); give as --teacher the model the student was pruned from")


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device here; use --device auto or cpu")
    return name


def _loss_kind(t: np.ndarray, dense: bool = False) -> str:
    if dense and t.dtype.kind == "f" and t.ndim >= 3 and t.shape[1] >= 2:
        return "kl-dense"
    if t.dtype.kind != "f" or t.ndim != 2 or t.shape[1] < 2:
        return "mse"
    if t.min() >= 0 and np.allclose(t.sum(axis=1), 1.0, atol=1e-3):
        return "prob"
    return "kl"


def _distill(kind: str, s: Any, t: Any, temp: float) -> Any:
    if kind == "kl-dense":  # [N, C, ...] class logits per position (segmentation): KL over C at every position
        c = s.shape[1]
        s, t, kind = s.movedim(1, -1).reshape(-1, c), t.movedim(1, -1).reshape(-1, c), "kl"
    if kind == "kl":
        return torch.nn.functional.kl_div(torch.log_softmax(s / temp, dim=1), torch.log_softmax(t / temp, dim=1),
                                          reduction="batchmean", log_target=True) * temp * temp
    if kind == "prob":
        eps = 1e-8
        return (t * (torch.log(t + eps) - torch.log(s.clamp_min(0) + eps))).sum(dim=1).mean()
    return ((s - t) ** 2).mean() / ((t ** 2).mean() + 1e-8)


def _fingerprint(student: onnx.ModelProto, teacher: onnx.ModelProto, opts: RecoverOptions, data: str) -> str:
    h = hashlib.sha256()
    for m in (student, teacher):
        h.update(hashlib.sha256(m.SerializeToString()).digest())
    keep = {k: v for k, v in opts.__dict__.items() if k not in ("checkpoint", "checkpoint_every", "resume",
                                                                  "device", "threads")}
    h.update(json.dumps(keep | {"data": data}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _save_checkpoint(path: str, state: dict[str, Any]) -> None:
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        raise UsageError(f"could not write the checkpoint {path}: {exc.strerror or exc}") from exc


def _load_checkpoint(path: str, fingerprint: str) -> dict[str, Any] | None:
    p = Path(path)
    if not p.exists():
        return None
    try:
        state: dict[str, Any] = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file says the same
        raise UsageError(f"checkpoint {path} cannot be read ({type(exc).__name__}); delete it to start over") from None
    if state.get("fingerprint") != fingerprint:
        raise UsageError(f"checkpoint {path} was made by another run (other models, data or options); "
                         "delete it or drop --resume")
    return state


def _labels(path: str, kind: str) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--labels {path}: cannot read it as a .npy array ({exc})") from None
    if kind == "ce" and arr.dtype.kind not in "iu":
        raise UsageError(f"--labels {path}: --task-loss ce needs integer class labels, got {arr.dtype}")
    return np.asarray(arr)


Batch = tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]

#: data with fewer batches has no held-out part: the model is selected on its first batch (in-sample)
MIN_HOLDOUT_BATCHES = 5


def _pass(teacher: onnx.ModelProto, source: Any, fetch_features: Sequence[str], threads: int) -> Iterator[Batch]:
    """One pass over the data: (offset of the batch's first sample, feeds, teacher tensors). Runs the teacher
    through :func:`spa.calibration.runner.run_batches` (fixed-batch models batched when that is exact)."""
    offset = 0
    for run in run_batches(teacher, source, fetch_features, outputs=True, progress=False, threads=threads):
        yield offset, run.feeds, run.values
        offset += run.samples


def _batches(teacher: onnx.ModelProto, source: Any, fetch_features: Sequence[str], threads: int,
             skip: int = 0) -> Iterator[Batch]:
    """The batches of :func:`_pass` after the first ``skip`` (held out), the data cycled forever."""
    while True:
        any_batch = False
        for k, batch in enumerate(_pass(teacher, source, fetch_features, threads)):
            if k >= skip:
                any_batch = True
                yield batch
        if not any_batch:
            raise UsageError(f"{source.describe()}: the data holds no samples")


def holdout_batches(samples: int | None, batch: int, fraction: float) -> int:
    """How many leading batches are held out: ``floor(fraction · batches)`` when the data has at least
    :data:`MIN_HOLDOUT_BATCHES` batches, else 0 (unknown size: 0)."""
    if samples is None or fraction <= 0:
        return 0
    n = -(-samples // batch)
    return int(fraction * n) if n >= MIN_HOLDOUT_BATCHES else 0


def student_batched(module: GraphModule, feeds: dict[str, Any], extra: Sequence[str]) -> bool:
    """Whether the torch graph runs a batch at once as it runs its samples one by one (a fixed-batch export may
    bake its batch size into a Reshape)."""
    n = len(next(iter(feeds.values())))
    if n < 2:
        return True
    probe = {k: v[:2] for k, v in feeds.items()}
    with torch.no_grad():
        try:
            got = module(probe, extra)
        except SpaError:
            return False
        try:
            want = [torch.cat(parts) for parts in zip(*(module({k: v[i:i + 1] for k, v in probe.items()}, extra)
                                                       for i in range(2)))]
        except (SpaError, RuntimeError):
            return True
    return all(a.shape == b.shape and (a.numel() == 0 or float((a.double() - b.double()).abs().max())
                                       <= 1e-4 * max(1.0, float(b.double().abs().max()))) for a, b in zip(got, want))


def _forward(module: GraphModule, feeds: dict[str, Any], extra: Sequence[str], batched: bool) -> list[Any]:
    if batched:
        return module(feeds, extra)  # type: ignore[no-any-return]
    n = len(next(iter(feeds.values())))
    runs = [module({k: v[i:i + 1] for k, v in feeds.items()}, extra) for i in range(n)]
    return [torch.cat(parts) if parts[0].dim() else parts[0] for parts in zip(*runs)]


def recover(student: onnx.ModelProto, teacher: onnx.ModelProto, data: object, options: RecoverOptions | None = None,
            *, progress: Callable[[int, int, float], None] | None = None) -> RecoverResult:
    """Train ``student``'s float initializers to reproduce ``teacher`` on ``data``.

    Args:
        student: the pruned model (not modified).
        teacher: the model it was pruned from.
        data: calibration data as for ``--calib`` (path, arrays, ``"random"``, a source).
        options: :class:`RecoverOptions`.
        progress: called after every step with ``(step, steps, loss)``.

    Raises:
        UsageError: mismatched models, data that does not fit, a foreign checkpoint.
        UnsupportedModelError: an op the torch executor cannot run (names the node).
        RecoverError: the loss became NaN (the last checkpoint is kept); RecoverInterrupted on Ctrl-C.
    """
    opts = options or RecoverOptions()
    opts.check()
    check_pair(student, teacher)
    run = _Run.prepare(student, teacher, data, opts)
    start = run.resume()
    t0 = time.perf_counter()
    run.hold_out(teacher)
    run.train(_batches(teacher, run.source, run.features, opts.threads or 1, run.skip), start, progress)
    selected = run.select()
    model = run.module.export()
    session(model)  # ONNX Runtime loads it (raises ValidationError naming why, before anything is written)
    return RecoverResult(model=model, losses=run.losses, steps=opts.steps, start_step=start, device=run.device,
                         wall_s=time.perf_counter() - t0, trainable=len(run.module.trainable), loss_kinds=run.kinds,
                         features=run.features, heldout=run.heldout, selected_step=selected,
                         heldout_source=run.heldout_source)


@dataclass
class _Run:
    """One distillation run: the student in torch, its optimiser, what the teacher's batches are matched on,
    the losses so far (resumable from a checkpoint)."""

    opts: RecoverOptions
    module: GraphModule
    optim: Any
    params: list[Any]
    device: str
    source: Any
    fingerprint: str
    features: list[str]
    fetch: list[str]
    n_out: int
    labels: np.ndarray | None
    losses: list[float] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    batched: bool | None = None
    skip: int = 0
    evals: list[Batch] = field(default_factory=list)
    heldout: list[tuple[int, float]] = field(default_factory=list)
    best: list[Any] | None = None
    best_step: int = 0
    heldout_source: str = ""

    @classmethod
    def prepare(cls, student: onnx.ModelProto, teacher: onnx.ModelProto, data: object, opts: RecoverOptions) -> _Run:
        """The student module (float initializers as parameters), Adam, the data (checked against the
        student's inputs before any training), labels and the intermediate features to match."""
        device = _device(opts.device)
        torch.manual_seed(opts.seed)
        if opts.threads:
            torch.set_num_threads(opts.threads)
        module = GraphModule(student).to(device)
        if not module.trainable:
            raise UsageError("the student has no float weights spa recover can train")
        source = load_calibration(data, samples=opts.samples, batch_size=opts.batch, seed=opts.seed)
        if source is None:
            raise UsageError("spa recover needs data: --data an .npz/.npy, an image folder or 'random'")
        samples = source.count(input_specs(student))  # checks names, shapes and dtypes before any training
        labels = _labels(opts.labels, opts.task_loss or "") if opts.labels else None
        features = _feature_names(student, teacher) if opts.features == "auto" else []
        params = list(module.parameters())
        fingerprint = _fingerprint(student, teacher, opts, str(data) if isinstance(data, (str, Path)) else "arrays")
        skip = holdout_batches(samples, int(getattr(source, "batch_size", opts.batch)), opts.holdout)
        return cls(opts, module, torch.optim.Adam(params, lr=opts.lr), params, device, source, fingerprint,
                   features, [o.name for o in teacher.graph.output] + features, len(student.graph.output), labels,
                   skip=skip)

    def hold_out(self, teacher: onnx.ModelProto) -> None:
        """The batches the model is selected on: the held-out ones, else the first training batch."""
        self.evals = list(itertools.islice(_pass(teacher, self.source, self.features, self.opts.threads or 1),
                                           max(1, self.skip)))
        n = sum(len(next(iter(f.values()))) for _, f, _ in self.evals)
        self.heldout_source = (f"{n} held-out samples (first {self.skip} batches)" if self.skip
                               else f"{n} training samples (first batch; too little data to hold any out)")

    def evaluate(self, step: int) -> None:
        """The mean loss on the selection batches after ``step`` steps; keep the parameters when it is the lowest."""
        with torch.no_grad():
            value = float(np.mean([float(self.loss(o, f, v)) for o, f, v in self.evals]))
        self.heldout.append((step, value))
        if self.best is None or value < min(v for _, v in self.heldout[:-1]):
            self.best, self.best_step = [p.detach().clone() for p in self.params], step
        log.debug("step %d: held-out loss %.6g (best at step %d)", step, value, self.best_step)

    def select(self) -> int:
        """With ``keep_best``: restore the parameters of the lowest held-out loss; the step they are from."""
        last = self.heldout[-1][0] if self.heldout else self.opts.steps
        if not self.opts.keep_best or self.best is None or self.best_step == last:
            return last
        with torch.no_grad():
            for p, v in zip(self.params, self.best):
                p.copy_(v)
        log.info("held-out loss lowest at step %d of %d: returning those weights", self.best_step, last)
        return self.best_step

    def resume(self) -> int:
        """With ``--resume`` and a checkpoint of this very run: restore it; the step to start from."""
        if not (self.opts.resume and self.opts.checkpoint):
            return 0
        state = _load_checkpoint(self.opts.checkpoint, self.fingerprint)
        if state is None:
            return 0
        with torch.no_grad():
            for p, v in zip(self.params, state["params"]):
                p.copy_(v.to(self.device))
        self.optim.load_state_dict(state["optim"])
        self.losses = list(state["losses"])
        self.heldout = [(int(k), float(v)) for k, v in state.get("heldout", [])]
        self.best, self.best_step = state.get("best"), int(state.get("best_step", 0))
        torch.set_rng_state(state["rng"])
        return int(state["step"])

    def checkpoint(self, step: int) -> None:
        """Write the state after ``step`` steps atomically (when a checkpoint path is given)."""
        if self.opts.checkpoint:
            _save_checkpoint(self.opts.checkpoint, {
                "fingerprint": self.fingerprint, "step": step, "losses": self.losses, "rng": torch.get_rng_state(),
                "params": [p.detach().cpu().clone() for p in self.params], "optim": self.optim.state_dict(),
                "heldout": self.heldout, "best_step": self.best_step,
                "best": [b.cpu() for b in self.best] if self.best is not None else None})

    def train(self, stream: Iterator[Any], start: int, progress: Callable[[int, int, float], None] | None) -> None:
        """Steps ``start .. steps``: :func:`learning_rate`, one optimiser step per batch, the held-out loss
        before the first step and every ``eval_every`` steps (:meth:`evaluate`), a checkpoint every
        ``checkpoint_every`` steps and on Ctrl-C; a non-finite loss or weight stops with :class:`RecoverError`."""
        opts = self.opts
        for _ in range(start):  # the data position of the resumed step (teacher not run)
            next(stream)
        done = start
        if not self.heldout:
            self.evaluate(start)
        try:
            for step in range(start, opts.steps):
                offset, feeds, values = next(stream)
                for g in self.optim.param_groups:
                    g["lr"] = learning_rate(opts, step)
                loss = self.loss(offset, feeds, values)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise RecoverError(_nan_message(step, opts))
                self.optim.zero_grad(set_to_none=True)
                loss.backward()
                self.optim.step()
                if not all(bool(torch.isfinite(p).all()) for p in self.params):
                    raise RecoverError(_nan_message(step, opts))
                self.losses.append(value)
                done = step + 1
                self.after_step(done, value, progress)
        except KeyboardInterrupt:
            self.checkpoint(done)
            where = (f"checkpoint {opts.checkpoint} (step {done}); rerun with --resume" if opts.checkpoint
                     else "no checkpoint (give --checkpoint)")
            raise RecoverInterrupted(f"interrupted at step {done} of {opts.steps}; {where}") from None

    def after_step(self, done: int, value: float, progress: Callable[[int, int, float], None] | None) -> None:
        """Progress, the held-out loss every ``eval_every`` steps and after the last, the periodic checkpoint."""
        opts = self.opts
        if progress:
            progress(done, opts.steps, value)
        if done % opts.eval_every == 0 or done == opts.steps:
            self.evaluate(done)
        if done % opts.checkpoint_every == 0 and done < opts.steps:
            self.checkpoint(done)

    def loss(self, offset: int, feeds: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> Any:
        """The batch's loss: distillation of every output (KL or MSE, :func:`_loss_kind`) and, at half
        weight, of every matched feature (MSE), plus the weighted task loss when labels are given."""
        opts, fetch, n_out = self.opts, self.fetch, self.n_out
        targets = [values[name] for name in fetch]
        bad = [name for name, t in zip(fetch, targets) if np.asarray(t).dtype.kind == "f" and not np.isfinite(t).all()]
        if bad:
            raise UsageError(f"{self.source.describe()}: the teacher's {bad[0]} is not finite on the batch at sample "
                             f"{offset}; check the data for NaN/inf or values out of the model's range")
        if not self.kinds:
            self.kinds = {name: _loss_kind(t, opts.dense_kl) for name, t in zip(fetch[:n_out], targets[:n_out])}
        tfeeds = {k: torch.from_numpy(np.array(v, copy=True)).to(self.device) for k, v in feeds.items()}
        if self.batched is None:
            self.batched = student_batched(self.module, tfeeds, self.features)
        outs = _forward(self.module, tfeeds, self.features, self.batched)
        loss = torch.zeros((), device=self.device)
        for k, (s, t) in enumerate(zip(outs, targets)):
            if not s.is_floating_point():
                continue
            tt = torch.from_numpy(np.array(t, copy=True)).to(self.device)
            kind = self.kinds[fetch[k]] if k < n_out else "mse"
            loss = loss + _distill(kind, s.float(), tt.float(), opts.temperature) * (1.0 if k < n_out else 0.5)
        if self.labels is not None:
            y = self.labels[offset:offset + len(next(iter(feeds.values())))]
            yt = torch.from_numpy(np.array(y, copy=True)).to(self.device)
            if opts.task_loss == "ce":
                task = torch.nn.functional.cross_entropy(outs[0].reshape(len(yt), -1), yt.long().reshape(-1))
            else:
                task = ((outs[0].reshape(yt.shape) - yt.float()) ** 2).mean()
            loss = loss + opts.task_weight * task
        return loss


def learning_rate(opts: RecoverOptions, step: int) -> float:
    """``lr · min(1, (step + 1) / W) · ½(1 + cos(π · step / steps))`` with ``W = warmup · steps`` warm-up steps
    (none when ``W < 1``)."""
    warm = opts.warmup * opts.steps
    ramp = min(1.0, (step + 1) / warm) if warm >= 1 else 1.0
    return opts.lr * ramp * 0.5 * (1 + math.cos(math.pi * step / opts.steps))


def _nan_message(step: int, opts: RecoverOptions) -> str:
    if opts.checkpoint and Path(opts.checkpoint).exists():
        kept = f"the last checkpoint {opts.checkpoint} is kept (--resume continues from it)"
    else:
        kept = "no checkpoint was written yet"
    return f"the loss became NaN at step {step + 1}; lower --lr (now {opts.lr:g}) and rerun; {kept}; no output written"


def _feature_names(student: onnx.ModelProto, teacher: onnx.ModelProto) -> list[str]:
    """Intermediate float tensors of the same name and shape in both models: the tensors pruning left whole
    (block outputs, residual streams), matched with MSE as features."""
    def shapes(m: onnx.ModelProto) -> dict[str, tuple[Any, ...]]:
        inferred = onnx.shape_inference.infer_shapes(m)
        out = {}
        for vi in inferred.graph.value_info:
            tt = vi.type.tensor_type
            if tt.elem_type == onnx.TensorProto.FLOAT and tt.HasField("shape") and len(tt.shape.dim) >= 2:
                out[vi.name] = tuple(d.dim_value or d.dim_param for d in tt.shape.dim)
        return out
    s, t = shapes(student), shapes(teacher)
    outputs = {o.name for o in student.graph.output}
    made = {o for n in student.graph.node if n.op_type in ("Add", "Conv", "Gemm", "MatMul", "Concat") for o in n.output}
    return sorted(n for n in s if n in t and s[n] == t[n] and n in made and n not in outputs)[:16]

"""The options of one prune, as one frozen, validated value.

:class:`PruneOptions` replaces the long keyword lists the API and the CLI used to pass around. It is
validated once, when it is made (``__post_init__``), so every layer below can trust it; it can be built
from keywords, from a TOML recipe (the same file ``spa prune --config`` reads) or from a mapping.

>>> o = PruneOptions(ratio=0.25, criterion="obs", calibration="random")
>>> o.ratio, o.round_to, o.budget
(0.25, 'latency', 'ratio')
>>> PruneOptions(round_to="8").round_to, PruneOptions(round_to=1).round_to
(8, 1)
>>> PruneOptions(ratio=1.0)
Traceback (most recent call last):
...
spa.errors.UsageError: ratio (--ratio) must be in [0, 1), got 1.0
>>> PruneOptions.from_mapping({"ratio": 0.5, "global": True, "override": [{"pattern": "fc*", "ratio": 0}]}).overrides
(('fc*', 0.0),)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from spa.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the backport (a dependency there)
    import tomli as tomllib

#: ``round_to`` values other than an integer: ``latency`` (channel counts chosen with the per-layer latency
#: table, the default) and ``auto`` (16 on CPU, 8 when CUDA is usable; resolved by the API)
ROUND_TO_MODES = ("latency", "auto")

#: how budgets are spread over the groups (``allocate``)
ALLOCATE_MODES = ("uniform", "sensitivity")
#: where a sensitivity probe's distortion is measured (:mod:`spa.quality.local`)
PROBE_SCOPES = ("auto", "model", "local")

#: where calibration statistics and sensitivity probes run (:mod:`spa.executors`)
EXECUTOR_MODES = ("serial", "local", "ray")
#: how the layers reading pruned channels are compensated (``reconstruct``)
RECONSTRUCT_MODES = ("none", "oneshot", "sequential")

#: how a consumer of an unconstrained group reads its channels
CONSUMER_MODES = ("layout", "gather", "zero", "auto")

#: recipe / command-line names that differ from the field names
ALIASES: Mapping[str, str] = MappingProxyType({"global": "global_rank", "calib": "calibration"})

#: recipe keys that belong to the command line (where to write), not to the prune itself
CLI_ONLY = frozenset({"output", "report", "html", "emit_masked", "external_data", "force", "eval", "eval_data",
                      "dry_run", "config", "provider", "latency_provider"})


@dataclass(frozen=True)
class PruneOptions:
    """Everything that decides what :func:`spa.prune` removes and how.

    Attributes:
        ratio: fraction of channels to remove from every prunable group, in [0, 1).
        criterion: importance criterion, a name from :data:`spa.criteria.CRITERIA`: ``l1``, ``l2``,
            ``random``, ``bn``, ``lamp``, ``obspa`` (data-free); ``obs``, ``wanda``, ``flap`` need
            ``calibration``; ``taylor``, ``snip`` (gradients) need ``calibration`` and torch.
        global_rank: rank channels across groups (scores normalised per group by ``normalize``).
        max_ratio: with ``global_rank``, the largest fraction one group may lose.
        round_to: ``"latency"`` (default): per group, pick the kept count near the criterion's whose layers the
            per-layer latency table (:mod:`spa.latency.counts`) says are fastest, with the budget kept
            (depthwise/grouped convolutions in whole SIMD blocks); an integer ``N``: counts are multiples of
            ``N`` (``1``: exactly what the criterion asks); ``"auto"``: 16 on CPU, 8 when CUDA is usable.
        min_channels: keep at least this many channels per group.
        ignore: glob patterns of node/tensor names whose groups are left alone.
        seed: seed of every random choice (same input + options + seed → byte-identical output).
        emit_masked: also build the masked twin (the mask oracle's reference).
        check: run the ONNX checker and load the result in ONNX Runtime.
        calibration: calibration data: a path (``.npz``, ``.npy``, an image folder), ``"random"``, arrays
            or a :mod:`spa.calibration` source.
        calib_samples: use at most this many calibration samples.
        calib_batch: calibration samples per ONNX Runtime run.
        calib_preprocess: image preprocessing (see :meth:`spa.calibration.Preprocess.parse`).
        target_macs: instead of ``ratio``: prune until MACs fall to this fraction (<= 1) or count (> 1).
        target_params: the same for parameters.
        target_latency: instead of ``ratio``: the smallest ratio whose ONNX Runtime latency is at most this
            fraction (<= 1) of the original's, or these milliseconds (> 1).
        overrides: ``(glob, ratio)`` pairs: groups touching matching names use that ratio.
        reduction: how a criterion combines a group's members: ``sum`` (default), ``mean``, ``max``.
        normalize: per-group score normalisation: ``mean`` (default), ``lamp``, ``zscore``, ``none``.
        criterion_options: further criterion options (``damp``, ``obspa_h``, ...; see each criterion).
        unconstrained: UPSCALE: consumers of a shared tensor keep their own channel subsets.
        reorder: with ``unconstrained``, lay channels out so consumer subsets are contiguous.
        consumer_mode: with ``unconstrained``: ``layout``, ``gather``, ``zero`` or ``auto`` (measured).
        prune_heads: prune attention-head groups.
        head_ratio: ratio of attention-head groups (default ``ratio``).
        prune_hidden: also prune the hidden size (groups of kind ``hidden``).
        hidden_ratio: ratio of hidden-size groups (default ``ratio``); needs ``prune_hidden``.
        prune_head_dim: prune V's head_dim instead of the heads where that is legal.
        providers: ONNX Runtime providers ``target_latency`` and ``consumer_mode="auto"`` measure on
            (None: CPU).
        latency_cache: folder of the per-layer latency tables (default ``$SPA_CACHE_DIR/latency``).
        shapes: concrete input shapes ``{input: (1, 3, 640, 640)}`` (``--shape``) the report counts MACs
            at (default: the calibration data's, else a stated representative default).
        realign: re-align each layer's output mean and variance to the original's on calibration data
            after pruning (:mod:`spa.quality.realign`); None: on when real calibration data is given.
        realign_variance: with ``realign``, match the variance too (else the mean only).
        reconstruct: how the layers that read pruned channels are compensated: ``none`` (not at all),
            ``oneshot`` (the criterion's own update, each layer against the original model's inputs: OBS's
            least squares, FLAP's bias shift; nothing for magnitude criteria) or ``sequential`` (each layer
            re-solved in topological order against the original's outputs given the pruned model's own
            inputs, :mod:`spa.quality.reconstruct`; needs calibration data). None: ``sequential`` for
            ``obs`` with real calibration data, else ``oneshot``.
        allocate: ``uniform`` or ``sensitivity`` (per-group ratios from measured sensitivity,
            :mod:`spa.quality.sensitivity`); None: ``sensitivity`` when real calibration data and a
            ``target_*`` are given.
        sensitivity_levels: the ratios each group is probed at.
        probe_samples: calibration samples the probes and re-alignment use.
        probe_scope: where a sensitivity probe's distortion is measured: ``model`` (the model's outputs,
            a forward pass per probe), ``local`` (the output of the block the group's weights sit in, a
            sub-graph run from cached activations, :mod:`spa.quality.local`) or ``auto`` (local for models
            with more than 256 MB of weights).
        executor: where calibration statistics and sensitivity probes run: ``serial`` (this process),
            ``local`` (a pool of processes here) or ``ray`` (a Ray cluster, ``pip install 'spa[ray]'``);
            the result is bit-identical whichever runs them.
        ray_address: with ``executor="ray"``: the cluster (default ``$RAY_ADDRESS``, else a Ray instance
            started on this machine).
        workers: processes of ``local`` / CPUs of a Ray instance started here (default: this machine's CPUs).

    ``criterion="auto"`` (the default) is ``obs`` with real calibration data, else ``l2``; see
    :meth:`resolved`.
    """

    ratio: float = 0.5
    criterion: str = "auto"
    global_rank: bool = False
    max_ratio: float = 0.9
    round_to: int | Literal["latency", "auto"] = "latency"
    min_channels: int = 1
    ignore: tuple[str, ...] = ()
    seed: int = 0
    emit_masked: bool = False
    check: bool = True
    calibration: object | None = None
    calib_samples: int | None = None
    calib_batch: int | None = None
    calib_preprocess: str | None = None
    target_macs: float | None = None
    target_params: float | None = None
    target_latency: float | None = None
    overrides: tuple[tuple[str, float], ...] = ()
    reduction: str | None = None
    normalize: str | None = None
    criterion_options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    unconstrained: bool = False
    reorder: bool = True
    consumer_mode: str = "layout"
    prune_heads: bool = True
    head_ratio: float | None = None
    prune_hidden: bool = False
    hidden_ratio: float | None = None
    prune_head_dim: bool = False
    providers: tuple[str, ...] | None = None
    latency_cache: str | os.PathLike[str] | None = None
    shapes: Mapping[str, tuple[int, ...]] | None = None
    realign: bool | None = None
    realign_variance: bool = True
    reconstruct: str | None = None
    allocate: str | None = None
    sensitivity_levels: tuple[float, ...] = (0.25, 0.5, 0.75)
    probe_samples: int = 64
    probe_scope: str = "auto"
    executor: str = "serial"
    ray_address: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the containers once, here
        set_(self, "ignore", tuple(str(p) for p in self.ignore))
        set_(self, "overrides", tuple((str(p), float(r)) for p, r in self.overrides))
        set_(self, "criterion_options", MappingProxyType(dict(self.criterion_options)))
        if self.providers is not None:
            set_(self, "providers", tuple(self.providers))
        if self.shapes is not None:
            try:
                shapes = {str(k): tuple(int(d) for d in v) for k, v in dict(self.shapes).items()}
            except (TypeError, ValueError) as exc:
                raise UsageError(f"shapes (--shape) must map input names to dimension lists ({exc})") from None
            if any(d < 1 for v in shapes.values() for d in v):
                raise UsageError(f"shapes (--shape) must be positive, got {shapes}")
            set_(self, "shapes", MappingProxyType(shapes))
        _check_fraction("ratio (--ratio)", self.ratio)
        for name, value in (("head_ratio (--head-ratio)", self.head_ratio),
                            ("hidden_ratio (--hidden-ratio)", self.hidden_ratio)):
            if value is not None:
                _check_fraction(name, value)
        for pattern, r in self.overrides:
            _check_fraction(f"the override ratio of '{pattern}'", r)
        if not 0.0 < self.max_ratio < 1.0:
            raise UsageError(f"max_ratio (--max-ratio) must be in (0, 1), got {self.max_ratio}")
        set_(self, "round_to", _round_to(self.round_to))
        if self.min_channels < 1:
            raise UsageError(f"min_channels (--min-channels) must be >= 1, got {self.min_channels}")
        if self.consumer_mode not in CONSUMER_MODES:
            raise UsageError(f"consumer_mode (--consumer-mode) must be one of {', '.join(CONSUMER_MODES)}, "
                             f"got {self.consumer_mode!r}")
        if self.hidden_ratio is not None and not self.prune_hidden:
            raise UsageError("hidden_ratio (--hidden-ratio) needs prune_hidden (--prune-hidden)")
        targets = [n for n, v in (("target_macs", self.target_macs), ("target_params", self.target_params),
                                  ("target_latency", self.target_latency)) if v is not None]
        if len(targets) > 1 and "target_latency" in targets:
            raise UsageError(f"give one budget, not {' and '.join(targets)}")
        self._check_quality()

    def _check_quality(self) -> None:
        """Validate the task-keeping options (re-alignment, allocation)."""
        set_ = object.__setattr__
        set_(self, "sensitivity_levels", tuple(float(x) for x in self.sensitivity_levels))
        if self.allocate is not None and self.allocate not in ALLOCATE_MODES:
            raise UsageError(f"allocate (--allocate) must be one of {', '.join(ALLOCATE_MODES)}, got {self.allocate!r}")
        if not self.sensitivity_levels or any(not 0.0 < x < 1.0 for x in self.sensitivity_levels):
            raise UsageError(f"sensitivity_levels must be fractions in (0, 1), got {list(self.sensitivity_levels)}")
        set_(self, "sensitivity_levels", tuple(sorted(set(self.sensitivity_levels))))
        if self.probe_samples < 1:
            raise UsageError(f"probe_samples must be >= 1, got {self.probe_samples}")
        if self.probe_scope not in PROBE_SCOPES:
            raise UsageError(f"probe_scope (--probe-scope) must be one of {', '.join(PROBE_SCOPES)}, "
                             f"got {self.probe_scope!r}")
        check_executor(self.executor, self.workers)
        if self.reconstruct is not None and self.reconstruct not in RECONSTRUCT_MODES:
            raise UsageError(f"reconstruct (--reconstruct) must be one of {', '.join(RECONSTRUCT_MODES)}, "
                             f"got {self.reconstruct!r}")
        if self.calibration is None:
            for name, value in (("--realign", self.realign is True), ("--allocate sensitivity",
                                                                     self.allocate == "sensitivity"),
                                ("--reconstruct sequential", self.reconstruct == "sequential")):
                if value:
                    raise UsageError(f"{name} needs calibration data: give --calib PATH (an image folder, an .npz "
                                     "or .npy of model inputs)")

    @property
    def has_data(self) -> bool:
        """Whether real calibration data was given (not ``"random"``)."""
        c = self.calibration
        if c is None or type(c).__name__ == "RandomSource":  # spa.calibration sits above options
            return False
        return not (isinstance(c, str) and c.strip().lower() == "random")

    def resolved(self) -> PruneOptions:
        """A copy with the data-dependent defaults decided: ``criterion="auto"`` → ``obs`` with real
        calibration data, else ``l2``; ``realign=None`` → on with real data; ``allocate=None`` →
        ``sensitivity`` with real data and a ``target_*``, else ``uniform``; ``reconstruct=None`` →
        ``sequential`` for ``obs`` with real data, else ``oneshot``.

        >>> o = PruneOptions(calibration="data.npz", target_macs=0.5).resolved()
        >>> o.criterion, o.realign, o.allocate, o.reconstruct
        ('obs', True, 'sensitivity', 'sequential')
        >>> o = PruneOptions().resolved(); o.criterion, o.realign, o.allocate, o.reconstruct
        ('l2', False, 'uniform', 'oneshot')
        """
        data = self.has_data
        criterion = self.criterion if self.criterion != "auto" else ("obs" if data else "l2")
        return dataclasses.replace(
            self, criterion=criterion, realign=data if self.realign is None else self.realign,
            allocate=self.allocate or ("sensitivity" if data and self.budget != "ratio" else "uniform"),
            reconstruct=self.reconstruct or ("sequential" if data and criterion == "obs" else "oneshot"))

    @property
    def budget(self) -> str:
        """What sets the amount removed: ``ratio``, ``macs``, ``params`` or ``latency``."""
        if self.target_latency is not None:
            return "latency"
        if self.target_macs is not None or self.target_params is not None:
            return "macs" if self.target_macs is not None else "params"
        return "ratio"

    def kind_ratios(self) -> dict[str, float | None]:
        """Ratios of group kinds that differ from ``ratio`` (None: leave that kind whole)."""
        kinds: dict[str, float | None] = {}
        if not self.prune_heads:
            kinds["head"] = None
        elif self.head_ratio is not None:
            kinds["head"] = self.head_ratio
        if self.hidden_ratio is not None:
            kinds["hidden"] = self.hidden_ratio
        return kinds

    def replace(self, **changes: Any) -> PruneOptions:
        """A copy with some fields changed (validated again); unknown names are a :class:`UsageError`."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, skip_cli: bool = True) -> PruneOptions:
        """Options from a recipe mapping: field names or command-line names (``global``, ``calib``,
        dashes or underscores) and ``override`` tables (``pattern``, ``ratio``); command-line-only keys
        (``output``, ``report``, ...) are skipped when ``skip_cli``."""
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name == "override":
                try:
                    values["overrides"] = [(str(o["pattern"]), float(o["ratio"])) for o in value]
                except (KeyError, TypeError, ValueError) as exc:
                    raise UsageError(f"each [[override]] needs pattern and ratio ({exc})") from exc
                continue
            if skip_cli and name in CLI_ONLY:
                continue
            values[ALIASES.get(name, name)] = value
        _check_names(values)
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> PruneOptions:
        """Options from a TOML recipe (the file ``spa prune --config`` reads)."""
        return cls.from_mapping(read_toml(path))

    def to_json(self) -> dict[str, object]:
        """The options as plain JSON values (calibration data is described, not copied)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "calibration" and value is not None and not isinstance(value, (str, os.PathLike)):
                value = type(value).__name__
            elif isinstance(value, MappingProxyType):
                value = dict(value)
            elif isinstance(value, os.PathLike):
                value = os.fspath(value)
            out[f.name] = value
        return out


def check_executor(executor: str, workers: int | None = None) -> None:
    """Refuse an unknown executor, ``ray`` where Ray is not installed, and fewer than one worker.

    >>> check_executor("threads")
    Traceback (most recent call last):
    ...
    spa.errors.UsageError: executor (--executor) must be one of serial, local, ray, got 'threads'
    """
    if executor not in EXECUTOR_MODES:
        raise UsageError(f"executor (--executor) must be one of {', '.join(EXECUTOR_MODES)}, got {executor!r}")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise UsageError("--executor ray needs Ray: pip install 'spa[ray]' (or pip install 'ray>=2.40')")
    if workers is not None and workers < 1:
        raise UsageError(f"workers (--workers) must be at least 1, got {workers}")


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a :class:`UsageError` naming it."""
    try:
        return dict(tomllib.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: {exc}") from exc


def field_names() -> tuple[str, ...]:
    """The names of every :class:`PruneOptions` field."""
    return tuple(f.name for f in dataclasses.fields(PruneOptions))


def _check_names(values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - set(field_names()))
    if unknown:
        raise UsageError(f"unknown prune option(s) {', '.join(unknown)}; known: {', '.join(field_names())}")


def _round_to(value: object) -> int | Literal["latency", "auto"]:
    """``round_to`` validated: an integer >= 1 (digits in a string too), ``latency`` or ``auto``."""
    text = str(value).strip().lower()
    if text == "latency":
        return "latency"
    if text == "auto":
        return "auto"
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise UsageError(f"round_to (--round-to) must be an integer >= 1, 'latency' or 'auto', got {value!r}")
    return int(text)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= float(value) < 1.0:
        raise UsageError(f"{name} must be in [0, 1), got {value}")


def coerce(options: PruneOptions | None, overrides: Mapping[str, Any]) -> PruneOptions:
    """``options`` (default: :class:`PruneOptions()`) with ``overrides`` applied: what :func:`spa.prune`
    accepts as its keywords."""
    base = options if options is not None else PruneOptions()
    return base.replace(**overrides) if overrides else base


__all__: Sequence[str] = ("PruneOptions", "coerce", "field_names", "read_toml")

"""The ``spa`` command line: analyze | prune | verify | bench | sweep | recover | report.

Thin: parses options, calls :mod:`spa.api`, prints rich tables or JSON. Library errors
(:class:`~spa.errors.SpaError`) become one-line messages and exit codes:
0 ok, 1 usage, 2 invalid model, 3 unsupported model, 4 validation failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from spa import api
from spa.bench import plot as bench_plot
from spa.bench.page import NO_PLOTS, report_kind, write_html
from spa.bench.report import BenchOptions, bench_models
from spa.bench.tables import bench_table, profile_tables, sweep_table, wide_console
from spa.errors import InvalidModelError, SpaError, UsageError
from spa.graph.io import atomic_path, check_paths, load_model, save_model
from spa.options import CLI_ONLY, PruneOptions, field_names, read_toml
from spa.runtime.providers import cuda_device_present, resolve_provider
from spa.sweep import SweepOptions, parse_ratios, run_sweep
from spa.validate.fidelity import fidelity
from spa.validate.oracle import DEFAULT_ATOL, DEFAULT_RTOL
from spa.version import __version__

# pipes and CI logs get a wide table instead of rich's 80-column default
log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=False, width=None if sys.stdout.isatty() else 140)
#: click >= 8.2 raises this for a group called without a command.
_NO_ARGS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _error(message: str) -> None:
    """Print one unwrapped line to stderr (pipelines grep it; rich would wrap at 80 columns)."""
    click.echo(" ".join(message.split()), err=True)


def _check_json_dest(dest: str | None, *inputs: str | None) -> None:
    """Refuse a JSON destination that is one of the inputs or lies in a missing folder (before any work)."""
    if not dest or dest == "-":
        return
    d = Path(dest)
    for inp in inputs:
        if inp and d.exists() and Path(inp).exists() and d.resolve() == Path(inp).resolve():
            raise UsageError(f"{dest} is an input file; choose another path for the JSON")
    if d.is_dir():
        raise UsageError(f"{dest}: is a directory; give a file path for the JSON")
    parent = d.parent if str(d.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{dest}: folder '{parent}' does not exist")


def _write_json(data: Any, dest: str | None) -> None:
    """Write JSON to ``dest`` atomically (temporary file in the same folder, then rename); '-' is stdout."""
    if not dest:
        return
    text = json.dumps(data, indent=2, default=str) + "\n"
    if dest == "-":
        click.echo(text, nl=False)
        return
    try:
        with atomic_path(dest) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"could not write {dest}: {exc.strerror or exc}") from exc


def _check_exists(*paths: str | None) -> None:
    for p in paths:
        if p and not Path(p).exists():
            raise InvalidModelError(f"{p}: no such file")


def _parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]] | None:
    shapes: dict[str, tuple[int, ...]] = {}
    for v in values:
        name, _, dims = v.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise UsageError(f"--shape '{v}': expected NAME=1x3x224x224") from None
    return shapes or None


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


@contextlib.contextmanager
def _working(ctx: click.Context, what: str) -> Iterator[Callable[[str], None]]:
    """A spinner on long work when the output is a terminal (never in pipes, CI logs or with --quiet);
    yields a function that shows the current stage next to it (logged at INFO, ``-v``, otherwise)."""
    if console.is_terminal and not (ctx.obj or {}).get("quiet"):
        with console.status(what) as status:
            yield lambda stage: status.update(f"{what}: {stage}")
    else:
        log.info("%s", what)
        yield lambda stage: log.info("%s: %s", what, stage)


def _round_to(value: object) -> int | str:
    """``--round-to``: ``latency`` (counts chosen with the per-layer latency table), an integer, or ``auto``
    (measured on this project's CPU: multiples of 16 raised MobileNetV2's latency efficiency at 50 % from
    0.61 to 0.81; CUDA tensor cores want 8)."""
    if str(value).lower() == "latency":
        return "latency"
    if str(value).lower() == "auto":
        return 8 if cuda_device_present() else 16
    try:
        n = int(str(value))
    except ValueError:
        raise UsageError(f"--round-to must be 'latency', an integer or 'auto', got {value!r}") from None
    if n < 1:
        raise UsageError(f"--round-to must be >= 1, got {n}")
    return n


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Read a TOML recipe into the command's defaults (command-line options still win)."""
    if not value:
        return value
    try:
        data = read_toml(value)
    except UsageError as exc:
        raise UsageError(f"--config {exc}") from exc
    overrides = data.pop("override", [])
    known = {p.name for p in ctx.command.params}
    unknown = sorted(k for k in data if k.replace("-", "_") not in known)
    if unknown:
        raise UsageError(f"--config {value}: unknown option(s) {', '.join(unknown)}")
    ctx.default_map = dict(ctx.default_map or {}) | {k.replace("-", "_"): v for k, v in data.items()}
    try:
        ctx.ensure_object(dict)["overrides"] = [(str(o["pattern"]), float(o["ratio"])) for o in overrides]
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"--config {value}: each [[override]] needs pattern and ratio ({exc})") from exc
    return value


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: int | bool) -> None:
    """``-q``/``-v`` given after the subcommand (``spa prune -q ...``): the same as before it."""
    if not value:
        return
    obj = ctx.ensure_object(dict)
    if param.name == "quiet":
        obj["quiet"] = True
        logging.getLogger().setLevel(logging.ERROR)
    elif not obj.get("quiet"):
        logging.getLogger().setLevel(logging.WARNING - 10 * min(int(value), 2))


def _verbosity(f: Callable[..., Any]) -> Callable[..., Any]:
    """The group's ``-v``/``-q``, accepted on a subcommand too."""
    f = click.option("-v", "--verbose", count=True, expose_value=False, callback=_set_verbosity,
                     help="More logging (-v info, -vv debug).")(f)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_verbosity,
                        help="Print nothing but errors.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spa")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """spa: structured pruning of ONNX models.

    Analyse which channels are coupled, remove the least important ones, check the result with the
    mask oracle, and measure it in ONNX Runtime. The input file is never modified.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level if not quiet else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"quiet": quiet}


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "json_out", metavar="PATH|-", help="Write the analysis as JSON ('-' for stdout).")
@click.option("--all", "show_all", is_flag=True, help="Show every group's members and all reasons.")
@click.option("--prune-hidden", is_flag=True, help="Report the hidden size (LayerNorm/RMSNorm-coupled) as prunable.")
@click.option("--prune-head-dim", is_flag=True, help="Report V's head_dim (with the output projection) as prunable "
              "instead of the heads, in every attention block where that is legal.")
@click.option("--shape", "shape_opts", multiple=True, metavar="NAME=1x3x224x224",
              help="Concrete input shape to count MACs at (default: a stated representative one).")
@_verbosity
@click.pass_context
def analyze(ctx: click.Context, model: str, json_out: str | None, show_all: bool, prune_hidden: bool,
            prune_head_dim: bool, shape_opts: tuple[str, ...]) -> int:
    """Show the groups of coupled channels of MODEL, prunable or blocked (with the reason)."""
    _check_json_dest(json_out, model)
    with _working(ctx, f"analysing {model}"):
        analysis = api.analyze(model, prune_hidden=prune_hidden, prune_head_dim=prune_head_dim)
        counted = api.macs(analysis.model, _parse_shapes(shape_opts))
    data = {"model": model, "spa_version": __version__} | counted | analysis.to_json()
    _write_json(data, json_out)
    if ctx.obj["quiet"] or json_out == "-":
        return 0
    table = Table(title=f"{model}: {len(analysis.groups)} channel groups, {len(analysis.prunable)} prunable")
    for col in ("id", "kind", "channels", "status", "group (first weight)", "members", "reason"):
        table.add_column(col, overflow="fold")
    for g in analysis.groups:
        n_w = sum(m.kind == "weight" for m in g.members)
        reason = "\n".join(g.reasons) if show_all else (g.reasons[0] if g.reasons else "")
        table.add_row(str(g.id), g.kind, str(g.channels), "[green]prunable" if g.prunable else "[red]blocked",
                      escape(g.label), f"{n_w} weights, {len(g.members) - n_w} tensors", escape(reason))
    console.print(table)
    console.print(f"prunable parameter fraction: {analysis.prunable_param_fraction():.1%} of weights lie in "
                  "prunable channel slices")
    n_macs = counted["macs"]
    console.print(f"MACs: {_human(n_macs if isinstance(n_macs, int) else 0)} at {counted['mac_shapes']} "
                  f"({counted['mac_shapes_from']})", highlight=False)
    return 0


def _executor_options(what: str, default: str) -> Callable[[F], F]:
    """``--executor``, ``--ray-address`` and ``--workers`` (``what`` runs on the executor)."""
    def deco(fn: F) -> F:
        fn = click.option("--workers", type=int, metavar="N", help="Processes of --executor local, or CPUs of a Ray "
                          "instance started here (default: this machine's CPUs).")(fn)
        fn = click.option("--ray-address", envvar="RAY_ADDRESS", show_envvar=True, metavar="ADDR",
                          help="With --executor ray: the cluster (`ray start --head` prints it); none: a Ray "
                          "instance on this machine.")(fn)
        return click.option("--executor", type=click.Choice(["serial", "local", "ray"]), default=default,
                            show_default=True, help=f"Where {what} run: this process, a local process pool, or a "
                            "Ray cluster (pip install 'spa[ray]'); the results are bit-identical.")(fn)
    return deco


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Pruned model path (required unless --dry-run).")
@click.option("--ratio", type=float, default=0.5, show_default=True, help="Fraction of channels to remove, in [0, 1).")
@click.option("--criterion", default="auto", show_default=True,
              help="Importance criterion: l1, l2, random, bn, lamp, obspa (data-free); "
                   "obs, wanda, flap (need --calib); taylor, snip (gradients: --calib and "
                   "pip install 'spa[recover]'); auto: obs with --calib data, else l2.")
@click.option("--realign/--no-realign", default=None,
              help="Re-align each pruned layer's output mean and variance to the original's on the calibration "
                   "data, folded into its weights [default: on with --calib data].")
@click.option("--reconstruct", type=click.Choice(["none", "oneshot", "sequential"]), default=None,
              help="Compensate the layers that read pruned channels: not at all, with the criterion's one-shot "
                   "update, or by sequential reconstruction (each layer re-solved in topological order against "
                   "the original's outputs given the pruned model's own inputs, on --calib data) "
                   "[default: sequential for obs with --calib data, else oneshot].")
@click.option("--allocate", type=click.Choice(["uniform", "sensitivity"]), default=None,
              help="Spread the budget uniformly, or by each group's measured sensitivity (probed on --calib "
                   "data) [default: sensitivity with --calib data and a --target-*].")
@click.option("--probe-scope", type=click.Choice(["auto", "model", "local"]), default="auto", show_default=True,
              help="Where a sensitivity probe is measured: at the model's outputs (a forward pass per probe), or "
                   "locally at the end of the block the group sits in (a sub-graph from cached activations; "
                   "auto: local for models over 256 MB of weights).")
@click.option("--global", "global_rank", is_flag=True,
              help="Rank channels across groups (scores as --normalize makes them per group).")
@click.option("--max-ratio", type=float, default=0.9, show_default=True, help="With --global: most a group may lose.")
@click.option("--round-to", default="latency", show_default=True, callback=lambda _c, _p, v: _round_to(v),
              help="'latency': per group, the kept count near the criterion's that the per-layer latency table "
              "says is fastest, the budget kept (depthwise/grouped convs in whole SIMD blocks); N: multiples of N "
              "(1: exact counts); 'auto': N for the provider spa bench would use (16 on CPU, 8 on CUDA).")
@click.option("--min-channels", type=int, default=1, show_default=True, help="Keep at least N channels per group.")
@click.option("--ignore", multiple=True, metavar="GLOB", help="Leave groups touching these node/tensor names alone.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random choices.")
@click.option("--report", metavar="PATH|-", help="Write a JSON report.")
@click.option("--html", type=click.Path(dir_okay=False), help="Write the report as one self-contained HTML page "
              "(channels per group, sensitivity curves, distortion; plots need 'spa[plot]').")
@click.option("--emit-masked", type=click.Path(dir_okay=False), help="Also write the masked twin (for `spa verify`).")
@click.option("--external-data", is_flag=True, help="Store the output's weights in a .data file beside it.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--calib", metavar="PATH|random", help="Calibration data: .npz (one array per input, samples first), "
              ".npy (single input), a folder of PNG/JPEG images, or 'random'.")
@click.option("--calib-samples", type=int, metavar="N", help="Use at most N calibration samples.")
@click.option("--calib-batch", type=int, metavar="B", help="Calibration samples per ONNX Runtime run (default 16).")
@click.option("--calib-preprocess", metavar="SPEC", help="Image preprocessing, e.g. "
              "'size=224x224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=nchw,order=rgb,scale=0.0039'.")
@click.option("--eval", "eval_data", metavar="PATH|random", help="Data for the fidelity report (default: --calib).")
@click.option("--reduction", type=click.Choice(["sum", "mean", "max"]), help="Combine a group's members (default sum).")
@click.option("--normalize", type=click.Choice(["mean", "lamp", "zscore", "none"]),
              help="Normalise scores per group (default mean; lamp for --criterion lamp).")
@click.option("--target-macs", type=float, metavar="X", help="Instead of --ratio: prune until MACs fall to X "
              "(a fraction <= 1 of the original, or an absolute count).")
@click.option("--target-params", type=float, metavar="X", help="The same for parameters.")
@click.option("--target-latency", type=float, metavar="X", help="Instead of --ratio: the smallest ratio whose "
              "latency in ONNX Runtime (--provider, 1 thread) is at most X (a fraction <= 1 of the original, or "
              "milliseconds); searched on a per-layer latency table, then measured against the original.")
@click.option("--provider", "latency_provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"],
              case_sensitive=False), default="cpu", show_default=True, help="Where --target-latency and "
              "--consumer-mode auto measure: auto takes TensorRT > CUDA > CPU by what really works here.")
@click.option("--latency-cache", type=click.Path(file_okay=False), metavar="DIR", help="With --target-latency: "
              "folder of the per-layer latency tables (default $SPA_CACHE_DIR/latency or ~/.cache/spa/latency).")
@click.option("--unconstrained", is_flag=True, help="UPSCALE: consumers of a shared tensor keep their own channels.")
@click.option("--reorder/--no-reorder", default=True, show_default=True,
              help="With --unconstrained: lay channels out so consumers read contiguous ranges (Slice, not Gather).")
@click.option("--consumer-mode", type=click.Choice(["layout", "gather", "zero", "auto"]), default="layout",
              show_default=True, help="With --unconstrained: how a consumer reads its channels; auto measures "
              "copy vs extra MACs in ONNX Runtime.")
@click.option("--prune-heads/--no-prune-heads", default=True, show_default=True, help="Prune attention heads.")
@click.option("--head-ratio", type=float, help="Ratio for attention-head groups (default: --ratio).")
@click.option("--prune-hidden", is_flag=True, help="Also prune the hidden size (transformer residual stream, "
              "coupled through LayerNorm/RMSNorm, whose statistics then run over the kept channels).")
@click.option("--hidden-ratio", type=float,
              help="With --prune-hidden: ratio for hidden-size groups (default: --ratio).")
@click.option("--prune-head-dim", is_flag=True, help="Prune V's head_dim (the same dims of every head, with the output "
              "projection's rows) instead of the heads, in every attention block where that is legal.")
@click.option("--shape", "shape_opts", multiple=True, metavar="NAME=1x3x640x640",
              help="Concrete input shape to count MACs at (default: the calibration data's, else a stated "
              "representative one).")
@_executor_options("calibration statistics (large data sets) and the sensitivity probes", "serial")
@click.option("--dry-run", is_flag=True, help="Print the plan as JSON (or to --report) and write no model.")
@click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=True, callback=_load_config,
              help="TOML file with option defaults and [[override]] pattern/ratio tables.")
@_verbosity
@click.pass_context
def prune(ctx: click.Context, model: str, **params: Any) -> int:
    """Prune MODEL and write the result to OUTPUT.

    Every option can also come from a TOML file given with --config (keys are option names with
    underscores, e.g. ``ratio = 0.4``, ``round_to = 8``; ``[[override]]`` tables with ``pattern`` and
    ``ratio`` set per-group ratios). Options on the command line win over the file.
    """
    output, report, emit_masked = params["output"], params["report"], params["emit_masked"]
    dry_run, html = bool(params["dry_run"]), params["html"]
    if dry_run and html:
        raise UsageError("--html shows a pruned model; drop --dry-run (or write its plan with --report)")
    options = _prune_options(ctx, params).replace(check=not dry_run, emit_masked=bool(emit_masked) and not dry_run)
    if not dry_run:
        _check_prune_destinations(model, output, {"--emit-masked": emit_masked, "--report": report,
                                                  "--html": html}, force=params["force"])
    with _working(ctx, f"pruning {model}") as stage:
        result = api.prune(model, options, progress=stage)
    if dry_run:
        data = {"input": model, "dry_run": True, "plan": result.plan.to_json()} | {
            k: v for k, v in result.report.items() if k != "groups"}
        _write_json(data, report or "-")
        return 0
    external = params["external_data"] or None
    result.save(output, external_data=external)
    if emit_masked:
        result.save_masked(emit_masked, external_data=external)
    rep = {"input": model, "output": output, "masked": emit_masked} | result.report
    fid_data = params["eval_data"] or params["calib"]
    if fid_data:
        images = Path(fid_data).is_dir()
        rep["fidelity"] = fidelity(load_model(model), result.model, fid_data, samples=options.calib_samples,
                                   batch_size=options.calib_batch,
                                   preprocess=options.calib_preprocess if images else None)
    _write_json(rep, report)
    if html:
        _write_page(ctx, html, prune=rep)
    if not ctx.obj["quiet"] and report != "-":
        _print_prune_summary(model, output, options, rep)
    if not options.has_data and not ctx.obj["quiet"]:  # last: an error before it stays one line
        click.echo(f"spa: warning: {rep.get('quality_note') or api.NO_DATA_NOTE}", err=True)
    return 0


def _prune_options(ctx: click.Context, params: dict[str, Any]) -> PruneOptions:
    """The :class:`PruneOptions` of ``spa prune``'s parsed options (recipe overrides included); the
    provider is resolved only when something is measured."""
    fields = {k: v for k, v in params.items() if k in field_names() and k not in CLI_ONLY}
    providers = None
    if params["target_latency"] is not None or params["consumer_mode"] == "auto":
        providers = tuple(resolve_provider(params["latency_provider"].lower()))
    shapes = _parse_shapes(params["shape_opts"]) or fields.pop("shapes", None)
    return PruneOptions(calibration=params["calib"], overrides=tuple(ctx.obj.get("overrides", ())),
                        providers=providers, shapes=shapes, **fields)


def _check_prune_destinations(model: str, output: str | None, extra: dict[str, str | None], *, force: bool) -> None:
    """Refuse a missing ``-o``, an output that is the input or exists (without ``--force``), and two
    outputs that are the same file (before any work)."""
    if not output:
        raise UsageError("missing option -o/--output (or use --dry-run)")
    check_paths(Path(model), Path(output), force=force)
    destinations = {"--output": Path(output).resolve()}
    for opt, dest in extra.items():
        if not dest or dest == "-":
            continue
        check_paths(Path(model), Path(dest), force=force)
        for other, resolved in destinations.items():
            if Path(dest).resolve() == resolved:
                raise UsageError(f"{opt} must differ from {other}")
        destinations[opt] = Path(dest).resolve()


def _print_prune_summary(model: str, output: str, options: PruneOptions, rep: dict[str, Any]) -> None:
    """Params/MACs before and after, the group counts, the first criterion notes and the fidelity table."""
    criterion = rep.get("criterion", options.criterion)
    table = Table(title=f"spa prune {model} --ratio {options.ratio} --criterion {criterion}")
    for col in ("", "before", "after", "after/before"):
        table.add_column(col, justify="right")
    for key in ("params", "macs"):
        b, a = float(rep[f"{key}_before"]), float(rep[f"{key}_after"])
        table.add_row(key.upper() if key == "macs" else key, _human(b), _human(a), f"{a / b:.3f}" if b else "-")
    console.print(table)
    console.print(f"groups: {rep['num_groups']} found, {rep['num_prunable']} prunable, {rep['num_pruned']} pruned "
                  f"-> {output}")
    if not rep["num_pruned"]:
        why = ("no prunable channel groups (see `spa analyze`)" if not rep["num_prunable"]
               else "the ratio and options removed no channel")
        console.print(f"[yellow]nothing was pruned: {why}")
    notes = list(rep.get("criterion_notes") or [])
    for note in notes[:5]:
        console.print(f"note: {note}", style="dim", markup=False, highlight=False)
    if len(notes) > 5:
        console.print(f"... and {len(notes) - 5} more notes (see --report)", style="dim", markup=False)
    if "fidelity" in rep:
        console.print(_fidelity_table(rep["fidelity"]))


def _fidelity_table(fid: dict[str, Any]) -> Table:
    """The fidelity of the pruned model against the original, one row per output."""
    table = Table(title=escape(f"fidelity vs the original on {fid['data']} ({fid['samples']} samples)"))
    for col in ("output", "cosine", "rel L2", "top-1 agreement"):
        table.add_column(col, justify="right")
    for name, o in fid["outputs"].items():
        if "error" in o:
            table.add_row(escape(name), escape(o["error"]), "", "")
            continue
        top1 = "-" if o["top1_agreement"] is None else f"{o['top1_agreement']:.4f}"
        table.add_row(escape(name), f"{o['cosine']:.6f}", f"{o['rel_l2']:.4g}", top1)
    return table


@cli.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("pruned", type=click.Path(dir_okay=False))
@click.option("--masked", type=click.Path(dir_okay=False), help="Masked twin from `spa prune --emit-masked`.")
@click.option("--trials", type=int, default=3, show_default=True, help="Random inputs to try.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rtol", type=float, default=DEFAULT_RTOL, show_default=True, help="Relative tolerance.")
@click.option("--atol", type=float, default=DEFAULT_ATOL, show_default=True,
              help="Absolute tolerance, in units of max(1, max|output|) per output.")
@click.option("--shape", "shape_opts", multiple=True, metavar="NAME=1x3x224x224", help="Concrete input shape.")
@click.option("--json", "json_out", metavar="PATH|-", help="Write the comparison as JSON.")
@_verbosity
@click.pass_context
def verify(ctx: click.Context, original: str, pruned: str, masked: str | None, trials: int, seed: int,
           rtol: float, atol: float, shape_opts: tuple[str, ...], json_out: str | None) -> int:
    """Check PRUNED against the masked twin (the mask oracle); exit 0 only if they agree.

    Without --masked, PRUNED is compared with ORIGINAL (agreement then means nothing was lost).
    """
    _check_exists(original, pruned, masked)
    _check_json_dest(json_out, original, pruned, masked)
    shapes = _parse_shapes(shape_opts)
    reference = masked or original
    # load through spa (clear per-file errors, external-data safety) before ONNX Runtime sees the files
    loaded = {p: load_model(p) for p in dict.fromkeys((pruned, reference))}
    res = api.verify(loaded[pruned], loaded[reference], trials=trials, seed=seed, rtol=rtol, atol=atol,
                     shapes=shapes)
    _write_json({"reference": reference, "pruned": pruned} | res.to_json(), json_out)
    if not ctx.obj["quiet"] and json_out != "-":
        table = Table(title=f"{pruned} vs {'masked twin' if masked else 'original'} ({trials} random inputs)")
        for col in ("output", "max |diff|", "max rel", "cosine", "ok"):
            table.add_column(col)
        for d in res.diffs:
            table.add_row(d.name, f"{d.max_abs:.3g}", f"{d.max_rel:.3g}", f"{d.cosine:.6f}",
                          "[green]yes" if d.ok else "[red]NO")
        console.print(table)
    if not res.ok:
        bad = ", ".join(d.name for d in res.diffs if not d.ok)
        _error(f"spa: verification failed: {pruned} differs from {reference} beyond rtol={rtol}, atol={atol} "
               f"(outputs: {bad})")
        return 4
    return 0


def _parse_batches(value: str | None) -> list[int] | None:
    """``--batch 1,8,32`` → [1, 8, 32]."""
    if not value:
        return None
    try:
        batches = [int(b) for b in value.split(",") if b.strip()]
    except ValueError:
        raise UsageError(f"--batch '{value}': expected sizes separated by commas, e.g. 1,8,32") from None
    if not batches or min(batches) < 1:
        raise UsageError(f"--batch '{value}': batch sizes must be integers >= 1")
    return list(dict.fromkeys(batches))


_PROVIDER_CHOICE = click.Choice(["auto", "cpu", "cuda", "tensorrt"], case_sensitive=False)


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--provider", type=_PROVIDER_CHOICE, default="auto", show_default=True,
              help="Execution provider; auto takes TensorRT > CUDA > CPU by what really works here.")
@click.option("--batch", "batch_opt", metavar="N[,N...]", help="Batch sizes (sets the first dim of every input).")
@click.option("--shape", "shape_opts", multiple=True, metavar="NAME=1x3x224x224", help="Concrete input shape.")
@click.option("--warmup", type=int, default=20, show_default=True, help="Untimed runs per model first.")
@click.option("--iters", type=int, default=200, show_default=True, help="Timed runs per model (alternating).")
@click.option("--threads", type=int, default=1, show_default=True, help="CPU intra-op threads (0: ORT default).")
@click.option("--fp16", is_flag=True, help="Time float16 copies (float32 inputs/outputs kept).")
@click.option("--profile", is_flag=True, help="Also profile each model: top nodes and op types by time.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "json_out", metavar="PATH|-", help="Write the measurements as JSON (docs/bench.md).")
@_verbosity
@click.pass_context
def bench(ctx: click.Context, models: tuple[str, ...], provider: str, batch_opt: str | None,
          shape_opts: tuple[str, ...], warmup: int, iters: int, threads: int, fp16: bool, profile: bool,
          seed: int, json_out: str | None) -> int:
    """Latency (ONNX Runtime), MACs, parameters and size of MODELS, each against the first.

    Models run in one process, alternating run by run after the warm-up. The speedup is set next to the
    ideal speedup (the MACs ratio); their ratio, the latency efficiency, says how much of the theoretical
    gain the graph really delivers.
    """
    _check_exists(*models)
    _check_json_dest(json_out, *models)
    opts = BenchOptions(provider=provider.lower(), batches=_parse_batches(batch_opt),
                        shapes=_parse_shapes(shape_opts), warmup=warmup, iters=iters, threads=threads, fp16=fp16,
                        profile=profile, seed=seed)
    opts.check()
    report = bench_models(list(models), opts)
    _write_json(report, json_out)
    if not ctx.obj["quiet"] and json_out != "-":
        out = wide_console(console)
        note = f"; {report['provider_note']}" if report["provider_note"] else ""
        out.print(f"provider: {report['provider']} (--provider {report['provider_requested']}{note})",
                  highlight=False)
        out.print(bench_table(report))
        for t in profile_tables(report):
            out.print(t)
    fallen = sorted({r["model"] for r in report["models"] if r["session_providers"][:1] != [report["provider"]]})
    if fallen:
        _error(f"spa: warning: ONNX Runtime did not run {', '.join(fallen)} on {report['provider']}")
    return 0


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the pruned models, sweep.csv, sweep.json and pareto.png.")
@click.option("--ratios", default="0.1:0.7:0.1", show_default=True, metavar="START:STOP:STEP|R,R,...",
              help="Pruning ratios (STOP included).")
@click.option("--criterion", default="l2", show_default=True,
              help="Importance criterion (as for `spa prune`), or a comma list (l1,l2): every ratio with each.")
@click.option("--global", "global_rank", is_flag=True, help="Rank channels across groups.")
@click.option("--round-to", default="latency", show_default=True, callback=lambda _c, _p, v: _round_to(v),
              help="'latency': per group, the kept count near the criterion's that the per-layer latency table "
              "says is fastest, the budget kept (depthwise/grouped convs in whole SIMD blocks); N: multiples of N "
              "(1: exact counts); 'auto': N for the provider spa bench would use (16 on CPU, 8 on CUDA).")
@click.option("--provider", type=_PROVIDER_CHOICE, default="auto", show_default=True, help="As for `spa bench`.")
@click.option("--batch", "batch_opt", type=int, help="Batch size (sets the first dim of every input).")
@click.option("--shape", "shape_opts", multiple=True, metavar="NAME=1x3x224x224", help="Concrete input shape.")
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--iters", type=int, default=100, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="CPU intra-op threads (0: ORT default).")
@click.option("--calib", type=click.Path(), help="Calibration data (.npz/.npy/image folder) for pruning and fidelity.")
@click.option("--eval", "eval_data", type=click.Path(), help="Evaluation data for the fidelity (else --calib).")
@click.option("--samples", type=int, help="Samples for the fidelity (default: all of the data, 8 random).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite the results of an earlier sweep in the folder.")
@click.option("--html", type=click.Path(dir_okay=False), help="Also write the sweep as one self-contained HTML page "
              "(Pareto plot and rows).")
@click.option("--resume", is_flag=True, help="Continue an interrupted sweep in the folder: the points it finished "
              "(with the same settings) are not pruned again.")
@_executor_options("the prunes", "local")
@_verbosity
@click.pass_context
def sweep(ctx: click.Context, model: str, out_dir: str, ratios: str, criterion: str, global_rank: bool,
          round_to: int | str, provider: str, batch_opt: int | None, shape_opts: tuple[str, ...], warmup: int,
          iters: int, threads: int, calib: str | None, eval_data: str | None, samples: int | None, seed: int,
          force: bool, html: str | None, resume: bool, executor: str, ray_address: str | None,
          workers: int | None) -> int:
    """Prune MODEL at several ratios and benchmark every result against it in one alternating run.

    Writes the pruned models, sweep.csv, sweep.json and (with matplotlib: pip install 'spa[plot]')
    pareto.png: latency against MACs, coloured by fidelity. Fidelity is measured on --eval/--calib data
    when given, else as output cosine similarity on seeded random inputs (labelled so).

    The prunes run on --executor (a local process pool by default, or a Ray cluster), each pruned model
    written as it completes; the benchmark and the fidelity always run here, in this process.
    """
    _check_exists(model, calib, eval_data)
    _check_html_dest(html, force, model, calib, eval_data)
    if samples is not None and samples < 1:
        raise UsageError(f"--samples must be at least 1, got {samples}")
    bench_opts = BenchOptions(provider=provider.lower(), batches=[batch_opt] if batch_opt else None,
                              shapes=_parse_shapes(shape_opts), warmup=warmup, iters=iters, threads=threads,
                              seed=seed)
    bench_opts.check()
    opts = SweepOptions(ratios=parse_ratios(ratios), criterion=criterion, bench=bench_opts, calib=calib,
                        eval_data=eval_data, samples=samples, seed=seed, force=force,
                        prune_kwargs={"global_rank": global_rank, "round_to": round_to}, executor=executor,
                        ray_address=ray_address, workers=workers, resume=resume)
    result = run_sweep(model, out_dir, opts)
    if html:
        _write_page(ctx, html, sweep=result)
    if not ctx.obj["quiet"]:
        b, out = result["bench"], wide_console(console)
        out.print(sweep_table(result["rows"], f"spa sweep {model} --criterion {criterion}: {b['provider']}, "
                                                  f"{b['threads'] or 'default'} thread(s), {b['iters']} runs"))
        out.print(f"fidelity: {result['fidelity_source']}; results: "
                      + ", ".join(v for v in result["files"].values() if v), highlight=False)
    return 0


@cli.command()
@click.argument("pruned", type=click.Path(dir_okay=False))
@click.option("--teacher", required=True, type=click.Path(dir_okay=False),
              help="The model PRUNED was pruned from (same inputs and outputs); runs in ONNX Runtime.")
@click.option("--data", required=True, type=click.Path(),
              help="Training inputs, no labels needed: .npz (one array per input), .npy, image folder or 'random'.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The recovered model.")
@click.option("--steps", type=int, default=300, show_default=True, help="Optimiser steps.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate (cosine decay to 0).")
@click.option("--batch", type=int, default=16, show_default=True, help="Samples per step (the data is cycled).")
@click.option("--samples", type=int, help="Use at most this many samples of the data.")
@click.option("--temperature", type=float, default=2.0, show_default=True, help="KL temperature on logits.")
@click.option("--features", type=click.Choice(["none", "auto"]), default="none", show_default=True,
              help="auto: also match intermediate tensors pruning left whole (same name and shape), by MSE.")
@click.option("--dense-kl", is_flag=True, help="Outputs [N, C, ...] are class logits per position (segmentation): "
              "KL over C at every position instead of MSE.")
@click.option("--warmup", type=float, default=0.1, show_default=True,
              help="Fraction of the steps over which the learning rate rises linearly to --lr.")
@click.option("--holdout", type=float, default=0.1, show_default=True,
              help="Fraction of the data's batches never trained on: the model is selected on its loss "
              "(with fewer than 5 batches: on the first batch).")
@click.option("--eval-every", type=int, default=25, show_default=True, help="Steps between held-out evaluations.")
@click.option("--keep-best/--keep-last", default=True, show_default=True,
              help="Return the weights of the lowest held-out loss (never worse than the input), or the last.")
@click.option("--labels", type=click.Path(dir_okay=False), help="Labels (.npy, one per sample, in data order).")
@click.option("--task-loss", type=click.Choice(["ce", "mse"]),
              help="Supervised loss on the first output (with --labels).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Checkpoint file (default OUTPUT.ckpt).")
@click.option("--checkpoint-every", type=int, default=50, show_default=True, help="Steps between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint of an earlier, interrupted run.")
@click.option("--threads", type=int, default=0, show_default=True, help="torch CPU threads (0: torch's default).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "json_out", metavar="PATH|-", help="Write the training summary (loss curve) as JSON.")
@click.option("--html", type=click.Path(dir_okay=False), help="Write the training summary and loss curve as one "
              "self-contained HTML page (`spa report` joins it to the prune report).")
@_verbosity
@click.pass_context
def recover(ctx: click.Context, pruned: str, teacher: str, data: str, output: str, force: bool,
            json_out: str | None, checkpoint: str | None, html: str | None, **params: Any) -> int:
    """Recover PRUNED's accuracy by distillation from --teacher (needs torch: pip install 'spa[recover]').

    Trains only PRUNED's float initializers to match the teacher's outputs on --data (KL with a temperature on
    logits, MSE elsewhere); the result is PRUNED node for node, with the weights of the lowest loss on a held-out
    part of the data (--holdout; the input's weights if training never beats them). Checkpoints every
    --checkpoint-every steps and on Ctrl-C; --resume continues. A loss that becomes NaN stops the run, keeping
    the last checkpoint.
    """
    _check_exists(pruned, teacher)
    if data != "random" and not Path(data).exists():
        raise UsageError(f"--data {data}: no such file or folder")
    _check_json_dest(json_out, pruned, teacher)
    _check_html_dest(html, force, pruned, teacher, data, output, json_out)
    out = Path(output)
    for other in (pruned, teacher, data):
        if out.resolve() == Path(other).resolve():
            raise UsageError(f"-o {output} is an input; choose another path")
    if out.exists() and not force:
        raise UsageError(f"{output} exists; pass --force to overwrite it")
    ckpt = checkpoint or f"{output}.ckpt"
    if params["resume"] and not Path(ckpt).exists():
        raise UsageError(f"--resume: no checkpoint {ckpt}; run without --resume first")
    student_model, teacher_model = load_model(pruned), load_model(teacher)
    quiet = ctx.obj["quiet"]
    from_step = [0]

    def progress(step: int, steps: int, loss: float) -> None:
        if quiet:
            return
        if step == steps or step % max(1, steps // 20) == 0 or from_step[0] == 0:
            from_step[0] = step
            click.echo(f"step {step}/{steps}  loss {loss:.5g}", err=True)

    result = api.recover(student_model, teacher_model, data, checkpoint=ckpt, progress=progress, **params)
    save_model(result.model, output)
    with contextlib.suppress(FileNotFoundError):
        Path(ckpt).unlink()
    summary = {"pruned": pruned, "teacher": teacher, "output": output} | result.to_json()
    _write_json(summary, json_out)
    if html:
        _write_page(ctx, html, recover=summary)
    if not quiet and json_out != "-":
        first, last = summary["loss_first"], summary["loss_last"]
        held = dict(result.heldout)
        chosen = result.selected_step if result.selected_step is not None else result.steps
        console.print(f"recovered {output}: {result.trainable} initializers trained, {result.steps} steps on "
                      f"{result.device} in {result.wall_s:.1f} s, loss {first:.4g} -> {last:.4g}; held-out loss "
                      f"{held.get(0, float('nan')):.4g} -> {held.get(chosen, float('nan')):.4g} (weights of step "
                      f"{chosen}; {result.heldout_source})", highlight=False)
    return 0


def _write_page(ctx: click.Context, dest: str, **reports: Any) -> None:
    """Write the HTML page of ``reports``; without matplotlib, say on stderr that it has no plots."""
    write_html(dest, **reports)
    if not bench_plot.plotting_available() and not ctx.obj["quiet"]:
        click.echo(f"spa: warning: {dest}: {NO_PLOTS}", err=True)


def _check_html_dest(dest: str | None, force: bool, *inputs: str | None) -> None:
    """Refuse an HTML destination that is an input or another output, lies in a missing folder, or exists
    without ``--force`` (before any work)."""
    if not dest:
        return
    if dest == "-":
        raise UsageError("--html needs a file path (the page is not written to stdout)")
    _check_json_dest(dest, *inputs)
    for other in inputs:
        if other and other != "random" and Path(dest).resolve() == Path(other).resolve():
            raise UsageError(f"--html {dest} is also an input or output; choose another path")
    if Path(dest).exists() and not force:
        raise UsageError(f"{dest} exists; pass --force to overwrite it")


@cli.command()
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--html", required=True, type=click.Path(dir_okay=False), help="The page to write.")
@click.option("--title", default="", help="Page title (default: the model's path).")
@click.option("--force", is_flag=True, help="Overwrite an existing page.")
@_verbosity
@click.pass_context
def report(ctx: click.Context, reports: tuple[str, ...], html: str, title: str, force: bool) -> int:
    """Render JSON REPORTS into one self-contained HTML page (plots need 'spa[plot]').

    REPORTS: a `spa prune --report` JSON, a `spa verify --json` result, a `spa recover --json` summary and/or a
    sweep.json, at most one of each kind, e.g. `spa report prune.json verify.json recover.json --html report.html`.
    """
    _check_html_dest(html, force, *reports)
    found: dict[str, Any] = {}
    for path in reports:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: not a readable JSON report ({exc})") from None
        try:
            kind = report_kind(data if isinstance(data, dict) else {})
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None
        if kind in found:
            raise UsageError(f"{path}: a second {kind} report; give at most one of each kind")
        found[kind] = data
    _write_page(ctx, html, title=title, **found)
    if not ctx.obj["quiet"]:
        console.print(f"wrote {html} ({', '.join(found)})", highlight=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and maps errors to exit codes and one-line messages."""
    try:
        rv = cli.main(args=argv, prog_name="spa", standalone_mode=False)
    except click.exceptions.Abort:
        _error("spa: aborted")
        return 130
    except _NO_ARGS_HELP as exc:  # `spa` alone: show the help
        click.echo(exc.format_message(), err=True)
        return 1
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        _error(f"spa: error: {exc.format_message()}{hint}")
        return 1
    except SpaError as exc:
        _error(f"spa: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return int(rv or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

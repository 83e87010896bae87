"""The ``spa`` command line: analyze | prune | verify | bench.

Thin: parses options, calls :mod:`spa.api`, prints rich tables or JSON. Library errors
(:class:`~spa.errors.SpaError`) become one-line messages and exit codes:
0 ok, 1 usage, 2 invalid model, 3 unsupported model, 4 validation failed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from spa import api
from spa.bench.latency import resolve_provider, time_models
from spa.bench.metrics import count_macs, count_params
from spa.errors import InvalidModelError, SpaError, UsageError
from spa.graph.io import check_paths, load_model, save_model
from spa.validate.oracle import DEFAULT_ATOL, DEFAULT_RTOL
from spa.version import __version__

console = Console(stderr=False)
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
    d = Path(dest)
    folder = d.parent if str(d.parent) else Path(".")
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{d.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, d)
        tmp = None
    except OSError as exc:
        raise UsageError(f"could not write {dest}: {exc.strerror or exc}") from exc
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


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
@click.pass_context
def analyze(ctx: click.Context, model: str, json_out: str | None, show_all: bool) -> int:
    """Show the groups of coupled channels of MODEL, prunable or blocked (with the reason)."""
    _check_json_dest(json_out, model)
    analysis = api.analyze(model)
    data = {"model": model, "spa_version": __version__} | analysis.to_json()
    _write_json(data, json_out)
    if ctx.obj["quiet"] or json_out == "-":
        return 0
    table = Table(title=f"{model}: {len(analysis.groups)} channel groups, {len(analysis.prunable)} prunable")
    for col in ("id", "channels", "status", "group (first weight)", "members", "reason"):
        table.add_column(col, overflow="fold")
    for g in analysis.groups:
        n_w = sum(m.kind == "weight" for m in g.members)
        reason = "\n".join(g.reasons) if show_all else (g.reasons[0] if g.reasons else "")
        table.add_row(str(g.id), str(g.channels), "[green]prunable" if g.prunable else "[red]blocked",
                      g.label, f"{n_w} weights, {len(g.members) - n_w} tensors", reason)
    console.print(table)
    console.print(f"prunable parameter fraction: {analysis.prunable_param_fraction():.1%}")
    return 0


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Pruned model path.")
@click.option("--ratio", type=float, default=0.5, show_default=True, help="Fraction of channels to remove, in [0, 1).")
@click.option("--criterion", default="l2", show_default=True, help="Importance criterion: l1, l2, random.")
@click.option("--global", "global_rank", is_flag=True, help="Rank channels across groups (normalised scores).")
@click.option("--max-ratio", type=float, default=0.9, show_default=True, help="With --global: most a group may lose.")
@click.option("--round-to", type=int, default=1, show_default=True, help="Keep channel counts multiples of N.")
@click.option("--min-channels", type=int, default=1, show_default=True, help="Keep at least N channels per group.")
@click.option("--ignore", multiple=True, metavar="GLOB", help="Leave groups touching these node/tensor names alone.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random choices.")
@click.option("--report", metavar="PATH|-", help="Write a JSON report.")
@click.option("--emit-masked", type=click.Path(dir_okay=False), help="Also write the masked twin (for `spa verify`).")
@click.option("--external-data", is_flag=True, help="Store the output's weights in a .data file beside it.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.pass_context
def prune(ctx: click.Context, model: str, output: str, ratio: float, criterion: str, global_rank: bool,
          max_ratio: float, round_to: int, min_channels: int, ignore: tuple[str, ...], seed: int,
          report: str | None, emit_masked: str | None, external_data: bool, force: bool) -> int:
    """Prune MODEL and write the result to OUTPUT."""
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"--ratio must be in [0, 1), got {ratio}")
    check_paths(Path(model), Path(output), force=force)
    destinations = {"--output": Path(output).resolve()}
    for opt, dest in (("--emit-masked", emit_masked), ("--report", report)):
        if not dest or dest == "-":
            continue
        check_paths(Path(model), Path(dest), force=force)
        for other, resolved in destinations.items():
            if Path(dest).resolve() == resolved:
                raise UsageError(f"{opt} must differ from {other}")
        destinations[opt] = Path(dest).resolve()
    result = api.prune(model, ratio, criterion, global_rank=global_rank, max_ratio=max_ratio,
                       round_to=round_to, min_channels=min_channels, ignore=ignore, seed=seed,
                       emit_masked=bool(emit_masked))
    save_model(result.model, output, external_data=external_data or None)
    if emit_masked and result.masked is not None:
        save_model(result.masked, emit_masked, external_data=external_data or None)
    rep = {"input": model, "output": output, "masked": emit_masked} | result.report
    _write_json(rep, report)
    if ctx.obj["quiet"] or report == "-":
        return 0
    r = result.report
    table = Table(title=f"spa prune {model} --ratio {ratio} --criterion {criterion}")
    for col in ("", "before", "after", "after/before"):
        table.add_column(col, justify="right")
    for key in ("params", "macs"):
        b, a = float(r[f"{key}_before"]), float(r[f"{key}_after"])  # type: ignore[arg-type]
        table.add_row(key.upper() if key == "macs" else key, _human(b), _human(a), f"{a / b:.3f}" if b else "-")
    console.print(table)
    console.print(f"groups: {r['num_groups']} found, {r['num_prunable']} prunable, {r['num_pruned']} pruned "
                  f"-> {output}")
    if not r["num_pruned"]:
        why = ("no prunable channel groups (see `spa analyze`)" if not r["num_prunable"]
               else "the ratio and options removed no channel")
        console.print(f"[yellow]nothing was pruned: {why}")
    return 0


@cli.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("pruned", type=click.Path(dir_okay=False))
@click.option("--masked", type=click.Path(dir_okay=False), help="Masked twin from `spa prune --emit-masked`.")
@click.option("--trials", type=int, default=3, show_default=True, help="Random inputs to try.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rtol", type=float, default=DEFAULT_RTOL, show_default=True)
@click.option("--atol", type=float, default=DEFAULT_ATOL, show_default=True)
@click.option("--shape", "shape_opts", multiple=True, metavar="NAME=1x3x224x224", help="Concrete input shape.")
@click.option("--json", "json_out", metavar="PATH|-", help="Write the comparison as JSON.")
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


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--provider", default="auto", show_default=True, help="auto, cpu, cuda or tensorrt.")
@click.option("--threads", type=int, default=1, show_default=True, help="CPU intra-op threads.")
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--iters", type=int, default=50, show_default=True)
@click.option("--shape", "shape_opts", multiple=True, metavar="NAME=1x3x224x224", help="Concrete input shape.")
@click.option("--json", "json_out", metavar="PATH|-", help="Write the measurements as JSON.")
@click.pass_context
def bench(ctx: click.Context, models: tuple[str, ...], provider: str, threads: int, warmup: int, iters: int,
          shape_opts: tuple[str, ...], json_out: str | None) -> int:
    """Latency (ONNX Runtime), MACs and parameters of MODELS, side by side with the first."""
    _check_exists(*models)
    _check_json_dest(json_out, *models)
    providers = resolve_provider(provider)
    shapes = _parse_shapes(shape_opts)
    graphs = [api.load(m) for m in models]
    timings = time_models(list(models), providers=providers, threads=threads, warmup=warmup, iters=iters,
                          shapes=shapes)
    rows = []
    for m, g, t in zip(models, graphs, timings):
        rows.append({"model": m, "macs": count_macs(g), "params": count_params(g),
                     "size_bytes": Path(m).stat().st_size} | t.to_json())
    base = rows[0]
    for r in rows:
        r["speedup"] = base["median_ms"] / r["median_ms"] if r["median_ms"] else None
        r["ideal_speedup"] = base["macs"] / r["macs"] if r["macs"] else None
        r["latency_efficiency"] = (r["speedup"] / r["ideal_speedup"]) if r["speedup"] and r["ideal_speedup"] else None
    data = {"provider": providers[0], "threads": threads, "warmup": warmup, "iters": iters, "models": rows}
    _write_json(data, json_out)
    if not ctx.obj["quiet"] and json_out != "-":
        table = Table(title=f"ONNX Runtime {providers[0]}, {threads} thread(s), {iters} runs after {warmup} warm-up")
        for col in ("model", "params", "MACs", "median ms", "p90 ms", "speedup", "ideal (MACs)", "efficiency"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(str(r["model"]), _human(r["params"]), _human(r["macs"]), f"{r['median_ms']:.3f}",
                          f"{r['p90_ms']:.3f}", f"{r['speedup']:.2f}x", f"{r['ideal_speedup']:.2f}x",
                          f"{r['latency_efficiency']:.2f}" if r["latency_efficiency"] else "-")
        console.print(table)
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

"""Command line: parse, call the library, print. No pipeline logic and no backend branches here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from enginesmith.errors import EnginesmithError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="enginesmith: PyTorch CNN -> verified edge engine.")
console = Console(stderr=True)
out = Console()


def _fail(e: EnginesmithError) -> None:
    console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    raise typer.Exit(e.exit_code)


def build(
    model: str = typer.Argument(..., help="registered model name (see `enginesmith models`)"),
    target: str = typer.Option("openvino", help="openvino | onnxruntime | tensorrt"),
    precision: str = typer.Option("int8", help="fp32 | fp16 | int8"),
    weights: Optional[Path] = typer.Option(None, help="Darknet .weights or PyTorch state dict"),
    calib: Optional[Path] = typer.Option(None, help="folder of calibration images (default: built-in photos)"),
    calib_method: str = typer.Option("minmax", help="minmax | entropy | percentile"),
    calib_size: int = typer.Option(64, help="number of calibration images"),
    batch: int = typer.Option(1, help="static batch size"),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="dynamic batch axis instead of --batch"),
    input_size: Optional[str] = typer.Option(None, help="HxW, e.g. 416x416"),
    num_classes: Optional[int] = typer.Option(None, help="number of classes (default: the model's)"),
    nms: str = typer.Option("host", help="detectors: engine (ONNX NonMaxSuppression in the engine) | host (numpy)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="output folder (default build/MODEL/TARGET-PRECISION)"),
    cache_dir: Optional[Path] = typer.Option(None, help="stage cache (default build/.cache or $ENGINESMITH_CACHE)"),
) -> None:
    """Build a verified engine for MODEL and print its report."""
    from enginesmith.pipeline.run import BuildConfig, build_engine, parse_input_size

    try:
        config = BuildConfig(
            model=model, target=target, precision=precision, weights=weights, calib=calib, calib_method=calib_method,
            calib_size=calib_size, batch=batch, dynamic_batch=dynamic_batch,
            input_size=parse_input_size(input_size) if input_size else None, num_classes=num_classes, out=out_dir,
            nms=nms,
        )
        if cache_dir is not None:
            config.cache_dir = cache_dir

        def on_start(stage: str) -> None:
            console.print(f"  [dim]…[/] {stage:<14} building", highlight=False)

        def on_stage(a) -> None:  # type: ignore[no-untyped-def]
            state = "cached" if a.cached else f"built in {a.wall_time_s:.1f} s"
            console.print(f"  [green]✓[/] {a.stage:<14} {state}", highlight=False)

        result = build_engine(config, on_stage=on_stage, on_start=on_start)
    except EnginesmithError as e:
        _fail(e)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: nothing half-written was kept")
        raise typer.Exit(130)
    sys.stdout.write(result.report)
    console.print(f"engine, manifest.json and report.md written to [bold]{result.out}[/]", highlight=False)


app.command("build")(build)


@app.command("models")
def models(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the registered models with task, input size, parameters and MACs."""
    from enginesmith.models.catalog import model_rows

    rows = model_rows()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("model", "task", "input", "classes", "params", "MACs", "boxes")
    for r in rows:
        table.add_row(r["name"], r["task"], "x".join(str(d) for d in r["input_shape"][1:]), str(r["num_classes"]), _si(r["params"]),
                      _si(r["macs"]), str(r.get("boxes", "")))
    out.print(table)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def main() -> None:
    app()


def build_engine_main() -> None:
    """`build-engine MODEL ...`: the same as `enginesmith build MODEL ...`."""
    typer.run(build)


if __name__ == "__main__":
    sys.exit(main())

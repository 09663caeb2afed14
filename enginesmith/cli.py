"""Command line: parse, call the library, print. No pipeline logic and no backend branches here.

A command function is as long as its list of typer options (`build` takes 27); its body only calls the library."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.markup import escape
from rich.table import Table

from enginesmith.backends.targets import PRECISIONS, TARGETS
from enginesmith.errors import EnginesmithError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="enginesmith: PyTorch CNN -> verified edge engine.")
console = Console(stderr=True)
out = Console()


CHANNELS_HELP = ("rgb | bgr: the channel order the checkpoint was trained on (default: the model's checkpoint family, "
                 "see README 'Checkpoint families'; e.g. bgr for ssd.pytorch's Caffe-converted ssd_300_VOC0712.pth)")
MEAN_HELP = "per-channel mean subtracted, in the order fed and the model's pixel scale, e.g. 123,117,104"
STD_HELP = "per-channel std divided by, in the order fed, e.g. 0.229,0.224,0.225"


def _fail(e: EnginesmithError) -> None:
    console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(e.exit_code)


def _os_error(e: OSError) -> EnginesmithError:
    """A filesystem error that reached the CLI (disk full, read-only, a folder removed meanwhile) as one line."""
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    hint = {28: "free some disk space (or use --cache-dir / --out on another disk) and run it again",
            30: "the file system is read-only: choose writable --out / --cache-dir folders",
            13: "permission denied: choose folders you can write"}.get(e.errno or 0, "check the path and run it again")
    return EnginesmithError(f"{e.strerror or type(e).__name__}{where}: {hint}; what was cached or published before "
                            "stays whole")


def build(
    model: str = typer.Argument(..., help="registered model name (see `enginesmith models`)"),
    target: str = typer.Option("openvino", help=" | ".join(TARGETS) + " | auto (build every engine this machine can run, "
                               "keep the fastest inside the accuracy budget)"),
    precision: Optional[str] = typer.Option(None, help=f"{' | '.join(PRECISIONS)} (mixed: int8 with the sensitive layers "
                                            "in float; needs --val) [default: int8; --target auto picks it]"),
    objective: str = typer.Option("latency", help="--target auto: latency (one image at a time) | throughput "
                                  "(images per second, batch 1 or 8)"),
    weights: Optional[Path] = typer.Option(None, help="Darknet .weights or PyTorch state dict"),
    cfg: Optional[Path] = typer.Option(None, help="model darknet: your network's Darknet .cfg ([net], convolutional, "
                                       "maxpool, upsample, route, shortcut, reorg, yolo, region)"),
    names: Optional[Path] = typer.Option(None, help="with --cfg: a Darknet .names file, one class name a line "
                                         "(default: COCO for 80 classes, VOC for 20, else 0..C-1)"),
    calib: Optional[Path] = typer.Option(None, help="folder of calibration images, or a VOC folder / COCO json (its train split); default: built-in photos"),
    calib_method: Optional[str] = typer.Option(None, help="minmax | entropy | percentile (default: the target's best, "
                                               "see benchmarks/quantizers-*.md)"),
    calib_size: int = typer.Option(64, help="number of calibration images"),
    batch: int = typer.Option(1, help="static batch size"),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="dynamic batch axis instead of --batch"),
    input_size: Optional[str] = typer.Option(None, help="HxW, e.g. 416x416"),
    num_classes: Optional[int] = typer.Option(None, help="number of classes (default: the model's)"),
    nms: str = typer.Option("host", help="detectors: engine (ONNX NonMaxSuppression in the engine) | host (numpy)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="output folder (default build/MODEL/TARGET-PRECISION)"),
    cache_dir: Optional[Path] = typer.Option(None, help="stage cache (default build/.cache or $ENGINESMITH_CACHE)"),
    val: Optional[Path] = typer.Option(None, help="held-out data (VOC folder, COCO json, class folders or 'digits'): "
                                       "the engine's mAP / top-1 is measured against FP32 PyTorch"),
    val_split: str = typer.Option("val", help="split of --val to measure on"),
    cluster: Optional[str] = typer.Option(None, help="with --val: measure the engine's metric in shards, as jobs on: local "
                                          "(child processes) | ray (a local Ray) | ray://HOST:PORT or HOST:PORT (a "
                                          "running cluster) | auto (RAY_ADDRESS); the value, and its cache entry, "
                                          "equal the unsharded one"),
    accuracy_budget: Optional[float] = typer.Option(None, help="largest allowed metric drop in points "
                                                    "(default 1.0 mAP for detectors, 0.5 top-1 for classifiers)"),
    fallback: str = typer.Option("none", help="int8 only: auto keeps the most sensitive layers in float until the budget holds"),
    nncf_preset: str = typer.Option("mixed", help="OpenVINO int8: NNCF preset mixed | performance"),
    overflow_fix: str = typer.Option("enable", help="OpenVINO int8: NNCF overflow fix enable | disable | first_layer_only"),
    force: bool = typer.Option(False, "--force", help="replace --out even if it is not an engine folder enginesmith "
                               "wrote (its contents are deleted)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="build every stage afresh (the new entries replace cached ones)"),
    channels: Optional[str] = typer.Option(None, help=CHANNELS_HELP),
    mean: Optional[str] = typer.Option(None, help=MEAN_HELP),
    std: Optional[str] = typer.Option(None, help=STD_HELP),
    rebuild: Optional[list[str]] = typer.Option(None, "--rebuild", help="build this stage afresh even if cached "
                                                "(repeatable: export, simplify, statistics, quantize-nncf, engine, latency, ...)"),
) -> None:
    """Build a verified engine for MODEL and print its report."""
    from enginesmith.pipeline.run import BuildConfig, build_engine, parse_input_size
    from enginesmith.runtime.preprocess_override import parse_values

    try:
        from enginesmith.benchmarks.auto_target import AUTO_TARGET, check_options

        auto = target == AUTO_TARGET
        check_options(target, precision, batch, dynamic_batch, fallback, objective)
        config = BuildConfig(
            model=model, target=target, precision=precision or "int8", weights=weights, cfg=cfg, names=names, calib=calib, calib_method=calib_method,
            calib_size=calib_size, batch=batch, dynamic_batch=dynamic_batch,
            input_size=parse_input_size(input_size) if input_size else None, num_classes=num_classes, out=out_dir,
            nms=nms, val=val, val_split=val_split, cluster=cluster, accuracy_budget=accuracy_budget, fallback=fallback,
            nncf_preset=nncf_preset, overflow_fix=overflow_fix, force=force,
            rebuild=True if no_cache else tuple(rebuild or ()),
            channels=channels, mean=parse_values(mean, "--mean"), std=parse_values(std, "--std"),
        )
        if cache_dir is not None:
            config.cache_dir = cache_dir

        def on_start(stage: str) -> None:
            console.print(f"  [dim]…[/] {stage:<14} building", highlight=False)

        def on_stage(a) -> None:  # type: ignore[no-untyped-def]
            state = "cached" if a.cached else f"built in {a.wall_time_s:.1f} s"
            console.print(f"  [green]✓[/] {a.stage:<14} {state}", highlight=False)

        def on_search_step(i: int, n: int, a) -> None:  # type: ignore[no-untyped-def]
            what = "int8, all layers quantized" if i == 0 else f"step {i}/{n}: {len(a.keep_float)} layers in float"
            result = a.error.split(";")[0] if a.error else f"metric {a.metric:.2f}, drop {a.drop:.2f}"
            console.print(f"  [cyan]mixed[/] {what}: {result}", highlight=False)

        if auto:
            from enginesmith.benchmarks.auto_target import build_auto

            out, _ = build_auto(config, objective, calib_method,
                                echo=lambda line: console.print(f"  [cyan]{escape(line)}[/]", highlight=False))
            report = (out / "report.md").read_text()
        else:
            result = build_engine(config, on_stage=on_stage, on_start=on_start, on_search_step=on_search_step)
            out, report = result.out, result.report
    except EnginesmithError as e:
        _fail(e)
    except OSError as e:
        _fail(_os_error(e))
    except MemoryError:
        _fail(EnginesmithError("out of memory: try a smaller --input-size, --batch or --calib-size, or close other programs"))
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: nothing half-written was kept")
        raise typer.Exit(130)
    sys.stdout.write(report)
    console.print(f"engine, manifest.json and report.md written to [bold]{out}[/]", highlight=False)



app.command("build")(build)

from enginesmith.benchmarks.bench_cli import bench  # noqa: E402  (light: typer and rich only)

app.command("bench")(bench)

from enginesmith.runtime.detect_cli import classify, detect  # noqa: E402  (light: typer and rich only)

app.command("detect")(detect)
app.command("classify")(classify)


@app.command("models")
def models(
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    cfg: Optional[Path] = typer.Option(None, help="a Darknet .cfg: its row only (the network build-engine darknet "
                                       "--cfg makes)"),
) -> None:
    """List the registered models with task, input size, parameters and MACs."""
    try:
        if cfg is not None:
            from enginesmith.models.catalog import cfg_row

            rows = [cfg_row(cfg)]
        else:
            from enginesmith.models.catalog_cache import registered_rows

            rows = registered_rows()
    except EnginesmithError as e:
        _fail(e)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    print_models(rows, out)


def print_models(rows: list[dict], to: Console) -> None:
    """The models table on `to`. Names are what a user copies, and rows what they grep: no cell is ever
    truncated or wrapped. The table is printed at its natural width even where the console is narrower (a
    pipe's 80 columns, a narrow terminal, which then wraps whole lines itself)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for header in ("model", "task", "input", "classes", "params", "MACs", "boxes"):
        table.add_column(header, no_wrap=True)
    for r in rows:
        table.add_row(r["name"], r["task"], "x".join(str(d) for d in r["input_shape"][1:]), str(r["num_classes"]),
                      _si(r["params"]), _si(r["macs"]), str(r.get("boxes", "")))
    natural = Measurement.get(to, to.options.update_width(100_000), table).maximum
    # Console.print never renders wider than its console: a console of the table's width, on the same file
    wide = Console(file=to.file, width=max(to.width, natural), force_terminal=to.is_terminal,
                   color_system=to.color_system, highlight=False)  # type: ignore[arg-type]
    wide.print(table, crop=False)


cache_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The stage cache: what it holds, and cleaning it.")
app.add_typer(cache_app, name="cache")


def _cache_root(cache_dir: Optional[Path]) -> Path:
    from enginesmith.pipeline.run import BuildConfig

    return cache_dir if cache_dir is not None else BuildConfig("").cache_dir


@cache_app.command("info")
def cache_info(cache_dir: Optional[Path] = typer.Option(None, help="stage cache (default build/.cache or $ENGINESMITH_CACHE)")) -> None:
    """Entries and size per stage."""
    from enginesmith.pipeline.cache_admin import cache_usage

    usage = cache_usage(_cache_root(cache_dir))
    table = Table("stage", "entries", "size", "last used")
    for stage, entries in usage.by_stage().items():
        newest = max(e.last_used for e in entries)
        table.add_row(stage, str(len(entries)), _bytes(sum(e.bytes for e in entries)),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(newest)))
    out.print(table)
    temps = f"; {len(usage.temps)} unfinished temp folders (running or killed builds)" if usage.temps else ""
    out.print(f"{usage.root}: {len(usage.entries)} entries, {_bytes(usage.bytes)}{temps}", highlight=False)


@cache_app.command("clean")
def cache_clean(
    cache_dir: Optional[Path] = typer.Option(None, help="stage cache (default build/.cache or $ENGINESMITH_CACHE)"),
    older_than: Optional[float] = typer.Option(None, help="remove entries last used more than this many days ago"),
    max_size: Optional[float] = typer.Option(None, help="then remove the least recently used until at most this many GB"),
    stage: Optional[list[str]] = typer.Option(None, help="only this stage (repeatable)"),
) -> None:
    """Remove cache entries (all of them when no option is given); entries a running build holds are kept."""
    from enginesmith.pipeline.cache_admin import clean_cache

    try:
        removed, busy = clean_cache(_cache_root(cache_dir), older_than, max_size, tuple(stage or ()))
    except EnginesmithError as e:
        _fail(e)
    freed = sum(e.bytes for e in removed)
    kept = f"; {len(busy)} in use by a running build, kept" if busy else ""
    out.print(f"removed {len(removed)} entries, freed {_bytes(freed)}{kept}", highlight=False)


def _bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Datasets built from what ships in pip packages.")
app.add_typer(data_app, name="data")


@data_app.command("offline")
def data_offline(
    out_dir: Path = typer.Option(..., "--out", help="folder to write (VOC layout with COCO json beside it)"),
    images: int = typer.Option(2000, help="number of images (split 70/15/15 into train/val/test)"),
    seed: int = typer.Option(0, help="random seed: the same seed gives the same dataset"),
) -> None:
    """Generate the offline detection set: real photos, real handwritten digits and drawn shapes."""
    from enginesmith.data.offline_detection import generate_offline_dataset
    from enginesmith.progress import progress_bar

    try:
        with progress_bar("offline dataset", images) as update:
            path = generate_offline_dataset(out_dir, images=images, seed=seed, progress=update)
    except EnginesmithError as e:
        _fail(e)
    console.print(f"offline dataset written to [bold]{path}[/]", highlight=False)


@app.command("worker")
def worker(
    address: Optional[str] = typer.Option(None, help="HEAD:PORT of the cluster to join (default: start a head here)"),
    port: int = typer.Option(6379, help="the head's port (with no --address)"),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs this node offers (default: all)"),
    print_only: bool = typer.Option(False, "--print", help="print the `ray start` command instead of running it"),
) -> None:
    """Start this machine as a Ray node advertising its device kinds (cpu:avx2, cpu:vnni, cpu:amx, gpu:H100 ...)
    and one benchmark slot, for `--cluster`."""
    import shlex

    from enginesmith.cluster.worker import ray_start_command, start_worker

    if print_only:
        out.print(shlex.join(ray_start_command(address, port, num_cpus)), highlight=False, soft_wrap=True)
        return
    try:
        code = start_worker(address, port, num_cpus)
    except EnginesmithError as e:
        _fail(e)
    raise typer.Exit(code)


@app.command("train")
def train(
    model: str = typer.Argument(..., help="registered model name (e.g. yolov3-tiny-256)"),
    dataset: Path = typer.Option(..., help="a VOC-style folder (e.g. from `enginesmith data offline`) or COCO json"),
    epochs: Optional[int] = typer.Option(None, help="epochs (default: the model's recipe)"),
    out_path: Optional[Path] = typer.Option(None, "--out", help="checkpoint path (default: in the cache)"),
    seed: int = typer.Option(0, help="random seed"),
    time_budget: Optional[float] = typer.Option(None, help="stop training after this many minutes"),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: all cores)"),
) -> None:
    """Train MODEL on a dataset with its family's loss; print the checkpoint path and validation mAP."""
    from enginesmith.training import train as train_model

    try:
        result = train_model(model, dataset, epochs=epochs, out=out_path, seed=seed,
                             time_budget_s=None if time_budget is None else 60.0 * time_budget, threads=threads)
    except EnginesmithError as e:
        _fail(e)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: no checkpoint was written")
        raise typer.Exit(130)
    out.print_json(json.dumps({"checkpoint": str(result.checkpoint), "reused": result.reused,
                               "metrics": result.metrics}, default=str))


@app.command("eval")
def evaluate(
    target: str = typer.Argument(..., help="an engine folder, a checkpoint, or a registered model name"),
    dataset: str = typer.Option(..., help="VOC folder / COCO json (detectors); class folders, a detection set or "
                                "'digits' (classifiers)"),
    split: str = typer.Option("test", help="dataset split"),
    weights: Optional[Path] = typer.Option(None, help="checkpoint for a registered model name"),
    num_classes: Optional[int] = typer.Option(None, help="number of classes (default: the checkpoint's or model's)"),
    input_size: Optional[str] = typer.Option(None, help="HxW for a model name (default: the checkpoint's or model's)"),
    batch: int = typer.Option(8, help="batch size for a model (an engine uses its own static batch)"),
    limit: Optional[int] = typer.Option(None, help="evaluate the first N images only"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the metrics as JSON to this file"),
    voc_metric: str = typer.Option("devkit", help="detectors: devkit (the VOC devkit's voc_eval.py, bit for bit: "
                                   "pixel-inclusive boxes, IoU > 0.5) | continuous (no +1, IoU >= 0.5)"),
    channels: Optional[str] = typer.Option(None, help=CHANNELS_HELP + "; PyTorch models only"),
    mean: Optional[str] = typer.Option(None, help=MEAN_HELP),
    std: Optional[str] = typer.Option(None, help=STD_HELP),
    cluster: Optional[str] = typer.Option(None, help="an engine folder in shards, as jobs on: local (child processes "
                                          "here, one after another) | ray (a local Ray) | ray://HOST:PORT or HOST:PORT "
                                          "(a running cluster) | auto (RAY_ADDRESS); the metric equals the unsharded "
                                          "one; the engine folder and dataset paths must be readable on every worker"),
    shards: Optional[int] = typer.Option(None, help="with --cluster: contiguous shards of the images (default: 2 per "
                                         "Ray node, 4 with local; at most one per batch of images)"),
) -> None:
    """Print mAP (VOC07 11-point, all-point, COCO) or top-1/top-5 for an engine or a PyTorch model."""
    from enginesmith.benchmarks.evaluate import evaluate as run_eval
    from enginesmith.benchmarks.evaluate import render_metrics
    from enginesmith.pipeline.run import parse_input_size
    from enginesmith.runtime.preprocess_override import make_override

    try:
        metrics = run_eval(target, dataset, split=split, weights=weights, num_classes=num_classes,
                           input_size=parse_input_size(input_size) if input_size else None, batch_size=batch,
                           limit=limit, voc_metric=voc_metric, preprocess=make_override(channels, mean, std),
                           cluster=cluster, shards=shards)
    except EnginesmithError as e:
        _fail(e)
    sys.stdout.write(render_metrics(metrics, warnings=False) + "\n")
    for w in metrics.get("warnings", []):  # an untrained engine or model, class mapping, preprocessing overrides
        print(f"warning: {w}", file=sys.stderr)
    if json_out is not None:
        from enginesmith.files import write_json_atomic

        write_json_atomic(json_out, metrics)


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def main() -> None:
    _guarded(app)


def build_engine_main() -> None:
    """`build-engine MODEL ...`: the same as `enginesmith build MODEL ...`."""
    _guarded(lambda: typer.run(build))


def _guarded(run: Callable[[], object]) -> None:
    """Any command: a filesystem error that escaped it (disk full, read-only, a folder removed meanwhile) is
    one line and exit 2, not a traceback."""
    try:
        run()
    except OSError as e:
        e2 = _os_error(e)
        console.print(f"[bold red]error:[/] {escape(str(e2))}", highlight=False, soft_wrap=True)
        sys.exit(e2.exit_code)


if __name__ == "__main__":
    sys.exit(main())

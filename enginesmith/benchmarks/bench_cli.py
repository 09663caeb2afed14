"""The `enginesmith bench` command (parse, call benchmarks.bench.run_bench, print). Registered in cli.py:

    app.command("bench")(bench)

`bench` is as long as its list of typer options; its body only calls the library.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from enginesmith.errors import EnginesmithError

_err = Console(stderr=True)


def bench(
    models: Optional[List[str]] = typer.Argument(None, help="registered model names; with --suite, run only these "
                                                 "models of the suite"),
    suite_file: Optional[Path] = typer.Option(None, "--suite", help="a suite file (TOML), e.g. "
                                              "benchmarks/suites/seed-table.toml"),
    targets: Optional[str] = typer.Option(None, help="comma-separated: torch (PyTorch eager FP32, the baseline), "
                                          "onnxruntime, openvino, tensorrt, torch-cuda, torch-compile [default: "
                                          "torch,onnxruntime,openvino]"),
    precisions: Optional[str] = typer.Option(None, help="comma-separated: fp32, fp16, bf16, int8, mixed [default: "
                                             "fp32,fp16,int8]"),
    batch: Optional[str] = typer.Option(None, "--batch", help="batch sizes, e.g. 1,8 [default: 1,8]"),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="HxW[,HxW...], e.g. 320,416,608 "
                                             "[default: each model's own]"),
    dataset: Optional[str] = typer.Option(None, help="held-out data (VOC folder, COCO json; 'digits' or class "
                                          "folders for classifiers): real images, and mAP / top-1 when "
                                          "--weights are given"),
    split: Optional[str] = typer.Option(None, help="split of --dataset [default: test]"),
    weights: Optional[List[str]] = typer.Option(None, "--weights", help="checkpoint: PATH (one model) or "
                                                "MODEL=PATH; repeat for several models"),
    out_dir: Path = typer.Option(Path("build/bench"), "--out", help="folder for results.json/csv/md and "
                                 "fps_vs_map.png"),
    engines: Optional[Path] = typer.Option(None, help="folder for the built engines [default: build/bench-engines]"),
    cache_dir: Optional[Path] = typer.Option(None, help="stage cache [default: build/.cache or $ENGINESMITH_CACHE]"),
    quick: bool = typer.Option(False, "--quick", help="a few iterations per engine and 8 calibration images (CI)"),
    min_time: Optional[float] = typer.Option(None, help="seconds of timed calls per measurement [default: 3, "
                                             "--quick 0.2]"),
    throughput: bool = typer.Option(True, "--throughput/--no-throughput", help="also OpenVINO's throughput mode "
                                    "(streams + async requests)"),
    ov_streams: Optional[int] = typer.Option(None, help="OpenVINO throughput mode: NUM_STREAMS [default: the "
                                             "plugin's choice]"),
    nms: str = typer.Option("host", help="detectors: host (numpy NMS) | engine (ONNX NonMaxSuppression inside)"),
    channels: Optional[List[str]] = typer.Option(None, "--channels", help="rgb | bgr, the channel order the "
                                                 "checkpoint was trained on: VALUE (one model) or MODEL=VALUE; "
                                                 "repeat for several models [default: each model's family]"),
    mean: Optional[List[str]] = typer.Option(None, "--mean", help="per-channel mean in the order fed: VALUES (one "
                                             "model) or MODEL=VALUES, e.g. ssd300=123,117,104"),
    std: Optional[List[str]] = typer.Option(None, "--std", help="per-channel std in the order fed: VALUES or "
                                            "MODEL=VALUES"),
    in_process: bool = typer.Option(False, "--in-process", help="measure in this process (faster start; no "
                                    "per-engine peak memory, no crash isolation)"),
    cluster: Optional[str] = typer.Option(None, help="run the builds and measurements as jobs: local (child "
                                          "processes) | ray (a local Ray for this run) | ray://HOST:PORT or HOST:PORT "
                                          "(a running cluster) | auto (RAY_ADDRESS)"),
    device: Optional[str] = typer.Option(None, help="--cluster: the device kind every row must run on (cpu:avx2, "
                                         "cpu:vnni, cpu:amx, gpu:H100 ...) [default: the suite's device, GPU "
                                         "targets on gpu]"),
    artifacts: str = typer.Option("send", help="--cluster: send (engine folders come back packed) | shared "
                                  "(--engines is a path every node shares)"),
) -> None:
    """Benchmark models x targets x precisions x batches: the SSD paper's table (FPS, mAP, # boxes) and more."""
    from enginesmith.benchmarks.bench import run_bench
    from enginesmith.benchmarks.results import PAPER_COLUMNS, paper_cells
    from enginesmith.benchmarks.suite import (DEFAULT_BATCHES, DEFAULT_PRECISIONS, DEFAULT_TARGETS, load_suite,
                                              override, parse_batches, parse_preprocess, parse_size, parse_weights,
                                              split_list, suite_from_args)
    from enginesmith.benchmarks.timing import TimingProfile

    try:
        t = split_list(targets, "--targets") or None
        p = split_list(precisions, "--precisions") or None
        b = parse_batches(split_list(batch, "--batch"), "--batch") if batch else None
        sizes = tuple(parse_size(s, "--input-size") for s in split_list(input_size, "--input-size")) or None
        if suite_file is not None:
            suite = override(load_suite(suite_file), models, t, p, b, sizes, split, device)
        else:
            suite = override(suite_from_args(list(models or []), t or DEFAULT_TARGETS, p or DEFAULT_PRECISIONS,
                                             b or DEFAULT_BATCHES, sizes or (), dataset, split or "test", nms),
                             device=device)
        if cluster is None and (device is not None or artifacts != "send"):
            raise EnginesmithError("--device and --artifacts place rows on a cluster's nodes; give --cluster too")
        if cluster is not None and in_process:
            raise EnginesmithError("--in-process measures in this process; it cannot be combined with --cluster")
        if min_time is not None and min_time < 0:
            raise EnginesmithError(f"--min-time must be >= 0 seconds, got {min_time}")
        profile = (TimingProfile.quick() if quick else TimingProfile()).with_min_time(min_time)
        names = list(dict.fromkeys(e.model for e in suite.entries))
        common = dict(weights=parse_weights(weights, names), dataset=dataset, profile=profile, quick=quick,
                      preprocess=parse_preprocess(channels, mean, std, names), cache_dir=cache_dir, engines=engines,
                      command=shlex.join(["enginesmith", *sys.argv[1:]]), throughput=throughput, ov_streams=ov_streams,
                      echo=lambda line: _err.print(f"  {line}", highlight=False, markup=False, soft_wrap=True))
        if cluster is not None:
            from enginesmith.benchmarks.cluster_bench import run_on_cluster

            outcome = run_on_cluster(suite, out_dir, cluster, artifacts, **common)
        else:
            outcome = run_bench(suite, out_dir, isolate=not in_process, **common)
    except EnginesmithError as e:
        _err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code)
    except KeyboardInterrupt:
        _err.print("[bold red]interrupted[/]: the rows measured so far are in the results files")
        raise typer.Exit(130)
    ok = [r for r in outcome.rows if r["status"] == "ok"]
    lines = ["| " + " | ".join(PAPER_COLUMNS) + " |", "|" + "|".join("---" for _ in PAPER_COLUMNS) + "|"]
    lines += ["| " + " | ".join(paper_cells(r)) + " |" for r in ok]
    sys.stdout.write("\n".join(lines) + "\n")
    _err.print(f"results written to [bold]{out_dir}[/] (results.md, results.csv, results.json, fps_vs_map.png)",
               highlight=False)
    if outcome.failed:
        _err.print(f"[bold red]error:[/] {len(outcome.failed)} of {len(outcome.rows)} runs failed; see the "
                   f"'Failed runs' table in {out_dir / 'results.md'}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)

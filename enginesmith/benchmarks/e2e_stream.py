"""End-to-end FPS of a built detector as an app sees it, against its inference-only FPS, in one process.

    python -m enginesmith.benchmarks.e2e_stream ENGINE_DIR [--images 32] [--min-time 3] [--rounds 3] [--out DIR]

On the same decoded real images (the offline photos: uint8 RGB at their own sizes), one after another:
- inference only: the engine's Runner on one preprocessed batch, synchronous calls (as `enginesmith bench`);
  for OpenVINO also its throughput mode (THROUGHPUT hint, the plugin's streams, async requests);
- end to end, sequential: `detector.batch(group)` on one engine batch of images after another, each call the
  synchronous path (preprocess, infer, decode + NMS, boxes back in the image's pixels; nothing overlapped);
- end to end, `load(engine).batch(images)` over all the images: host work overlapped with inference (OpenVINO:
  stream()'s async request queue on a THROUGHPUT model; other backends: runtime/overlap.py, a worker thread
  preprocessing the next group and post-processing the last one while the caller's thread runs the engine);
- end to end, streamed: `load(engine).stream(images)` (the same loop as batch(), lazily), the path the example
  app (examples/edge_app.py) uses.
- host work alone, in this thread with the engine idle: preprocessing (resize + normalise, as `batch()` does it)
  and post-processing (decode + NMS + boxes back in the image's pixels) of the same images, as CPU-ms per image.
  With them, the CPU bound of any end-to-end loop: cores / (inference CPU-ms + host CPU-ms) images per second,
  as a fraction of the inference-only FPS. No overlap beats it; only less work per image does.
Each loop runs over all images, repeated until `min_time` seconds, after one warm-up pass; the four loops run in
`--rounds` interleaved rounds (a drifting machine slows them alike) and each reports its median. Writes
e2e-MODEL-TARGET-PRECISION-bBATCH.json/.md with the FPS, the ratios end-to-end / inference-only, each loop's
CPU-ms per image and cores kept busy (the process's CPU time, engine threads included: a loop with every core
busy is bound by the CPU, not by how it overlaps), and whether batch() and stream() give the sequential loop's
detections.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from enginesmith.backends.targets import TARGETS
from enginesmith.benchmarks.bench import load_images
from enginesmith.benchmarks.machine import run_header
from enginesmith.benchmarks.timing import TimingProfile, openvino_throughput, time_calls
from enginesmith.errors import EnginesmithError
from enginesmith.files import write_json_atomic, write_text_atomic
from enginesmith.runtime import load
from enginesmith.runtime.preprocess import preprocess, preprocess_batch


def _cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds used so far: by this process, all its threads (the engine's own included), or with
    RUSAGE_THREAD by the calling thread alone."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _repeat(call: Callable[[], int], min_time: float) -> tuple[float, float]:
    """(images per second, process CPU seconds per image) over repeated calls of `call` (which returns how many
    images it did): one warm-up call, then timing.time_calls until `min_time` seconds; the CPU seconds count all
    the calls (warm-up included)."""
    counts: list[int] = []
    start = _cpu_s()
    ms = time_calls(lambda: counts.append(call()), TimingProfile(warmup_iterations=1, warmup_s=0.0,
                                                                 min_iterations=1, min_time_s=min_time))
    return sum(counts[-len(ms):]) * 1000.0 / float(ms.sum()), (_cpu_s() - start) / max(1, sum(counts))


def _host_cpu_ms(call: Callable[[], int], min_time: float) -> float:
    """This thread's CPU-ms per image over repeated calls of `call` (which returns how many images it did):
    one warm-up call, then calls until `min_time` seconds of CPU (at least one)."""
    call()
    images, start = 0, _cpu_s(resource.RUSAGE_THREAD)
    while True:
        images += call()
        if _cpu_s(resource.RUSAGE_THREAD) - start >= min_time:
            return 1e3 * (_cpu_s(resource.RUSAGE_THREAD) - start) / images


def measure_e2e(engine_dir: Path, images: list[np.ndarray], min_time: float, rounds: int = 1) -> dict[str, Any]:
    """The FPS of the module docstring for the detector in `engine_dir` on `images` (H, W, 3) uint8 RGB.

    The four loops (inference only, sequential, batch(), streamed) run `rounds` times interleaved, one after another
    in each round, so a machine whose speed drifts slows every loop alike; each loop's FPS and CPU-ms per image is
    its median over the rounds (all rounds' FPS in `fps_rounds`)."""
    detector = load(engine_dir)
    info = detector.info
    if info.task != "detection":
        raise EnginesmithError(f"{engine_dir} is a {info.task} engine; this benchmark measures detectors")
    batch = detector.batch_size
    x = np.stack([preprocess(images[i % len(images)], info.preprocess)[0] for i in range(batch)]).astype(np.float32)
    result: dict[str, Any] = {"engine": str(engine_dir), "model": info.model, "target": info.target,
                              "precision": info.precision, "batch": batch, "images": len(images), "min_time_s": min_time,
                              "rounds": rounds}
    if TARGETS[info.target].streams_async:
        hint = TARGETS[info.target].options(info.precision)["inference_precision"]
        result["inference_fps_throughput"] = openvino_throughput(Path(info.engine_file), x, hint, min_time)["fps"]
    fps_rounds: dict[str, list[float]] = {"inference": [], "sequential": [], "batch": [], "streamed": []}
    cpu_rounds: dict[str, list[float]] = {k: [] for k in fps_rounds}
    with TARGETS[info.target].runner(info.engine_file, info.precision) as runner, detector:
        groups = [images[i:i + batch] for i in range(0, len(images), batch)]
        raws = [detector.raw(group) for group in groups]
        host = {"preprocess": _host_cpu_ms(lambda: sum(len(preprocess_batch(g, info.preprocess)) for g in groups),
                                           min_time / 3),
                "postprocess": _host_cpu_ms(lambda: sum(len(detector._postprocess(*raw)) for raw in raws), min_time / 3)}

        def one_by_one() -> list[Any]:
            return [r for i in range(0, len(images), batch) for r in detector.batch(images[i:i + batch])]

        sequential, batched, streamed = one_by_one(), detector.batch(images), list(detector.stream(images))
        loops: dict[str, Callable[[], int]] = {
            "inference": lambda: (runner.infer({info.input_name: x}), batch)[1],
            "sequential": lambda: len(one_by_one()),
            "batch": lambda: len(detector.batch(images)),
            "streamed": lambda: len(list(detector.stream(images)))}
        for _ in range(rounds):
            for key, call in loops.items():
                images_per_s, cpu_s = _repeat(call, min_time)
                fps_rounds[key].append(images_per_s)
                cpu_rounds[key].append(cpu_s)
    cpu = {k: float(np.median(v)) for k, v in cpu_rounds.items()}
    fps = {k: float(np.median(v)) for k, v in fps_rounds.items()}
    result["fps_rounds"] = fps_rounds
    result["inference_fps"] = fps["inference"]
    for key in ("sequential", "batch", "streamed"):
        result[f"e2e_fps_{key}"] = fps[key]
    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    # CPU-ms per image and how many cores each loop kept busy (CPU-s per image x images per s): a loop near
    # `cores` busy is bound by the CPU, and no overlap makes it faster without less work per image
    result["cores"] = len(os.sched_getaffinity(0))
    result["cpu_ms_per_image"] = {k: 1e3 * v for k, v in cpu.items()}
    result["cores_busy"] = {k: cpu[k] * fps[k] for k in fps}
    result["host_cpu_ms_per_image"] = host
    result["cpu_bound_fps"] = result["cores"] * 1e3 / (1e3 * cpu["inference"] + sum(host.values()))
    result["cpu_bound_over_inference"] = result["cpu_bound_fps"] / result["inference_fps"]
    result["batch_equals_sequential"] = _same(batched, sequential)
    result["streamed_equals_sequential"] = _same(streamed, sequential)
    result["detections"] = int(sum(len(d) for d in sequential))
    for key in ("e2e_fps_sequential", "e2e_fps_batch", "e2e_fps_streamed"):
        result[key.replace("e2e_fps", "ratio") + "_over_inference"] = result[key] / result["inference_fps"]
    return result


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(len(x) == len(y) and all(d.class_id == e.class_id and np.allclose(d.box, e.box, atol=1e-3)
                                                             for d, e in zip(x, y)) for x, y in zip(a, b))


def render_markdown(header: dict[str, Any], r: dict[str, Any]) -> str:
    rows = [("inference only, synchronous calls (as `enginesmith bench`)", r["inference_fps"], None, "inference"),
            ("inference only, OpenVINO throughput mode", r.get("inference_fps_throughput"), None, None),
            ("end to end, sequential (`detector.batch` on one engine batch at a time)", r["e2e_fps_sequential"],
             r["ratio_sequential_over_inference"], "sequential"),
            ("end to end, `detector.batch` on all images (host work overlapped)", r["e2e_fps_batch"],
             r["ratio_batch_over_inference"], "batch"),
            ("end to end, streamed (`detector.stream`)", r["e2e_fps_streamed"], r["ratio_streamed_over_inference"],
             "streamed")]
    cpu, busy = r.get("cpu_ms_per_image", {}), r.get("cores_busy", {})  # absent from results of before they were measured
    host = r.get("host_cpu_ms_per_image", {})  # absent from results of before it was measured
    lines = [f"# End to end vs inference only: {r['model']} {r['target']} {r['precision']}, batch {r['batch']}", "",
             f"- command: `{header['command']}`", f"- date: {header['date']}",
             f"- machine: {header['machine']}; commit {header['commit']}; load average (1/5/15 min) "
             f"at start {header['load_average']}, at end {r.get('load_average_end')}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in header["versions"].items()),
             f"- {r['images']} decoded real photos (uint8 RGB, their own sizes) cycled, {r['min_time_s']} s per loop after "
             f"a warm-up pass, {r.get('rounds', 1)} interleaved round(s), medians; {r['detections']} detections per pass; results equal the sequential loop's: batch() "
             f"{r['batch_equals_sequential']}, stream() {r['streamed_equals_sequential']}", "",
             f"- CPU-ms per image: the process's CPU time (every thread) over the loop's images; cores busy: that x "
             f"FPS, of the {r.get('cores', '?')} this process may use", "",
             "| loop | FPS | / inference-only sync FPS | CPU-ms per image | cores busy |", "|---|---|---|---|---|"]
    for name, fps, ratio, key in rows:
        if fps is not None:
            lines.append(f"| {name} | {fps:.1f} | " + ("—" if ratio is None else f"{100 * ratio:.0f}%") + " | "
                         + (f"{cpu[key]:.2f} | {busy[key]:.2f}" if key in cpu else "— | —") + " |")
    if host:
        lines += ["", "Host work alone, in one thread with the engine idle (CPU-ms per image): preprocessing (resize + "
                  f"normalise) {host['preprocess']:.2f}, post-processing (decode + NMS + boxes back) "
                  f"{host['postprocess']:.2f}. CPU bound of any end-to-end loop on these {r['cores']} cores: "
                  f"{r['cores']} / (inference {cpu['inference']:.2f} + host {sum(host.values()):.2f} CPU-ms) = "
                  f"{r['cpu_bound_fps']:.1f} FPS, {100 * r['cpu_bound_over_inference']:.0f}% of inference only."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", type=Path, help="a detector engine folder (manifest.json + engine)")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--min-time", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the four loops (medians reported)")
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    args = parser.parse_args(argv)
    try:
        if args.images < 1 or args.min_time < 0 or args.rounds < 1:
            raise EnginesmithError("--images and --rounds must be >= 1 and --min-time >= 0")
        header = {**run_header(), "command": shlex.join(["python", "-m", "enginesmith.benchmarks.e2e_stream",
                                                          *(sys.argv[1:] if argv is None else argv)]),
                  "load_average": [round(v, 2) for v in os.getloadavg()]}
        result = measure_e2e(args.engine, load_images({"kind": "photos", "seed": 0}, args.images), args.min_time,
                             args.rounds)
    except EnginesmithError as e:
        sys.stderr.write(f"error: {e}\n")
        return e.exit_code
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"e2e-{result['model']}-{result['target']}-{result['precision']}-b{result['batch']}"
    write_json_atomic(stem.with_suffix(".json"), {"run": header, "result": result})
    text = render_markdown(header, result)
    write_text_atomic(stem.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

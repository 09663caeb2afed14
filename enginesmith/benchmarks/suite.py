"""Benchmark suites: which models, input sizes, targets, precisions and batches `enginesmith bench` runs.

A suite is a TOML file (read with tomllib) or the command line's MODEL... options; both become a
`Suite`, which `plan()` expands into one `Run` per model x input size x target x precision x batch.

    [suite]                          # defaults for every [[model]]
    name = "edge"
    targets = ["torch", "onnxruntime", "openvino"]
    precisions = ["fp32", "fp16", "int8"]
    batches = [1, 8]
    dataset = "${ENGINESMITH_OFFLINE_DATA:-build/offline}"   # held-out data (optional)
    split = "test"

    [[model]]
    model = "yolov3-tiny-256"        # a registered name (required)
    method = "YOLOv3-tiny (256)"     # the table's Method column (default: the model name)
    input_sizes = [256, "320x320"]   # default: the model's own input size
    weights = "${ENGINESMITH_WEIGHTS_YOLOV3_TINY_256}"

Keys of [[model]]: model, method, input_sizes, targets, precisions, batches, weights, dataset, split,
calib, nms, num_classes. Keys of [suite]: name, description, targets, precisions, batches, dataset,
split, calib, calib_size, nms. A [[model]] key overrides the [suite] one.

Paths (weights, dataset, calib) may name environment variables as `${NAME}` or `${NAME:-default}`,
since checkpoints and datasets are not in git; relative paths are taken from the current directory.
A variable that is unset (and has no default) is an error that says how to set it, unless the command
line gives that model's weights (`--weights MODEL=PATH`) or the dataset (`--dataset DIR`).

The "torch" target is PyTorch eager FP32 on the CPU (the baseline of every ratio): it runs once per
model x size x batch whatever the precisions; "torch-cuda" runs fp32 and fp16 on the GPU (channels_last,
FP16 by autocast) and "torch-compile" the same model compiled by torch.compile (Inductor) on the GPU.

Longer than 400 lines: the TOML format, the command-line overrides and the plan expansion check the same
keys against the same tables; kept in one file so the format is read in one place.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from enginesmith.backends.targets import PRECISIONS, TARGETS
from enginesmith.cluster.devices import check_kind
from enginesmith.errors import EnginesmithError
from enginesmith.models import registry
from enginesmith.runtime.preprocess_override import PreprocessOverride, make_override, resolve_preprocess



@dataclass(frozen=True)
class Baseline:
    """A PyTorch target of the bench (not an engine): where it runs, whether torch.compile compiles it first,
    the precisions it runs (fp16 by autocast)."""

    device: str  # "cpu" | "cuda"
    compiled: bool
    precisions: tuple[str, ...]


BASELINES = {
    "torch": Baseline("cpu", compiled=False, precisions=("fp32",)),
    "torch-cuda": Baseline("cuda", compiled=False, precisions=("fp32", "fp16")),
    "torch-compile": Baseline("cuda", compiled=True, precisions=("fp32", "fp16")),
}
# the FP32 run every speed-up on a device divides by
REFERENCE_BASELINE = {"cpu": "torch", "cuda": "torch-cuda"}
BENCH_TARGETS = (*BASELINES, *TARGETS)
GPU_TARGETS = (*(n for n, b in BASELINES.items() if b.device == "cuda"), *(n for n, t in TARGETS.items() if t.needs_gpu))
BENCH_PRECISIONS = tuple(PRECISIONS)
NMS_MODES = ("host", "engine")
DEFAULT_TARGETS = ("torch", "onnxruntime", "openvino")
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCHES = (1, 8)
DEFAULT_SPLIT = "test"
DEFAULT_CALIB_SIZE = 64

SUITE_KEYS = ("name", "description", "targets", "precisions", "batches", "dataset", "split", "calib", "calib_size", "nms",
              "device")
MODEL_KEYS = ("model", "method", "input_sizes", "targets", "precisions", "batches", "weights", "dataset", "split",
              "calib", "nms", "num_classes", "device")
GPU_DEVICE = "gpu"  # where a GPU target's rows run when the suite names no device: any node with a GPU
try:  # Python 3.11+; the package declares >= 3.10, where the same parser is the `tomli` backport
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class ModelEntry:
    """One [[model]] of a suite, defaults already merged. Paths are kept as written (with ${VARS})."""

    model: str
    method: str
    input_sizes: tuple[tuple[int, int], ...]  # () -> the model's own size
    targets: tuple[str, ...]
    precisions: tuple[str, ...]
    batches: tuple[int, ...]
    weights: str | None = None
    dataset: str | None = None
    split: str = DEFAULT_SPLIT
    calib: str | None = None
    nms: str = "host"
    num_classes: int | None = None
    # where its rows must run (a device kind, cluster/devices.py), per target; a target not listed: anywhere
    # (GPU targets: any GPU node)
    devices: tuple[tuple[str, str], ...] = ()
    where: str = "the command line"  # for error messages: "edge.toml [[model]] #2 (ssd-slim-256)"

    def device_for(self, target: str) -> str | None:
        """The device kind `target`'s rows need: the entry's, else "gpu" for a GPU target, else None (any node)."""
        return dict(self.devices).get(target) or (GPU_DEVICE if target in GPU_TARGETS else None)


@dataclass(frozen=True)
class Suite:
    name: str
    entries: tuple[ModelEntry, ...]
    description: str = ""
    calib_size: int = DEFAULT_CALIB_SIZE
    source: Path | None = None


@dataclass(frozen=True)
class Run:
    """One row of the results: a model at one input size on one target, precision and batch."""

    model: str
    method: str
    input_size: tuple[int, int]
    target: str
    precision: str
    batch: int
    task: str
    weights: Path | None = None
    dataset: Path | str | None = None  # a path, or "digits" for classifiers
    split: str = DEFAULT_SPLIT
    calib: Path | None = None
    nms: str = "host"
    num_classes: int | None = None
    preprocess: PreprocessOverride | None = None  # --channels / --mean / --std for this model
    device: str | None = None  # the device kind of the node it must be built and measured on (--cluster); None: any

    @property
    def size_text(self) -> str:
        return f"{self.input_size[0]}x{self.input_size[1]}"

    @property
    def key(self) -> str:
        return f"{self.model}@{self.size_text}/{self.target}/{self.precision}/b{self.batch}"

    @property
    def measures_accuracy(self) -> bool:
        """Accuracy is measured when both trained weights and held-out data are given."""
        return self.weights is not None and self.dataset is not None


@dataclass(frozen=True)
class Skipped:
    key: str
    reason: str


# ------------------------------------------------------------------------------------------- parsing


def parse_size(value: Any, where: str) -> tuple[int, int]:
    """416, "416" or "416x416" -> (416, 416); anything else is an error naming `where`."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value > 0:
        return value, value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", value)
        if m and int(m.group(1)) > 0 and int(m.group(2) or m.group(1)) > 0:
            return int(m.group(1)), int(m.group(2) or m.group(1))
    raise EnginesmithError(f"{where}: input size {value!r} is not HxW (write 416 or \"416x416\")")


def split_list(text: str | None, what: str) -> tuple[str, ...]:
    """'a, b,c' -> ('a', 'b', 'c'); an empty item is an error."""
    if text is None:
        return ()
    items = tuple(s.strip() for s in str(text).split(","))
    if not items or any(not s for s in items):
        raise EnginesmithError(f"{what} {text!r}: give a comma-separated list without empty items")
    return items


def parse_batches(items: Any, where: str) -> tuple[int, ...]:
    """[1, 8] or ["1", "8"] -> (1, 8); anything not a whole number >= 1 is an error naming `where`."""
    if isinstance(items, (str, int)):
        items = [items]
    values = []
    for v in items:
        text = str(v).strip()
        if isinstance(v, bool) or not text.isdigit() or int(text) < 1:
            raise EnginesmithError(f"{where}: batch {v!r} is not a whole number >= 1")
        values.append(int(text))
    if not values:
        raise EnginesmithError(f"{where}: no batch sizes given")
    return tuple(dict.fromkeys(values))


def _choices(items: Any, allowed: tuple[str, ...], what: str, where: str) -> tuple[str, ...]:
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise EnginesmithError(f"{where}: {what} must be a list, e.g. [\"{allowed[0]}\"], got {items!r}")
    out = []
    for v in items:
        if not isinstance(v, str) or v.strip().lower() not in allowed:
            close = difflib.get_close_matches(str(v), allowed, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise EnginesmithError(f"{where}: unknown {what[:-1]} {v!r}{hint}; choose from {', '.join(allowed)}")
        out.append(v.strip().lower())
    if not out:
        raise EnginesmithError(f"{where}: {what} is empty")
    return tuple(dict.fromkeys(out))


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(allowed)}"
            raise EnginesmithError(f"{where}: unknown key {key!r}{hint}")


def _str(value: Any, key: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise EnginesmithError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value.strip()


def parse_devices(value: Any, targets: tuple[str, ...], where: str) -> tuple[tuple[str, str], ...]:
    """`device = "cpu:amx"` (every target of the entry) or `device = {tensorrt = "gpu:H100", openvino = "cpu:amx"}`
    -> ((target, kind), ...); a bad kind or an unknown target is one line naming `where`."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple((t, check_kind(value.strip(), f"{where}: device")) for t in targets)
    if not isinstance(value, Mapping):
        raise EnginesmithError(f"{where}: device must be a device kind (\"cpu:amx\") or a table of them by target "
                               f"({{tensorrt = \"gpu:H100\"}}), got {value!r}")
    out = []
    for target, kind in value.items():
        _choices([target], BENCH_TARGETS, "targets", f"{where}: device")
        out.append((target.strip().lower(), check_kind(str(kind).strip(), f"{where}: device.{target}")))
    return tuple(out)


def _entry(table: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> ModelEntry:
    _check_keys(table, MODEL_KEYS, where)
    if "model" not in table:
        raise EnginesmithError(f"{where}: every [[model]] needs model = \"NAME\" (a registered model)")
    name = _str(table["model"], "model", where)
    assert name is not None
    try:
        spec = registry.get(name)
    except EnginesmithError as e:
        raise EnginesmithError(f"{where}: {e}") from None
    where = f"{where} ({spec.name})"
    merged = {**defaults, **table}
    sizes = merged.get("input_sizes", [])
    if not isinstance(sizes, (list, tuple)):
        sizes = [sizes]
    sizes_t = tuple(dict.fromkeys(parse_size(s, where) for s in sizes))
    for s in sizes_t:
        try:
            spec.check_input_size(s)
        except EnginesmithError as e:
            raise EnginesmithError(f"{where}: {e}") from None
    nms = _str(merged.get("nms", "host"), "nms", where)
    if nms not in NMS_MODES:
        raise EnginesmithError(f"{where}: nms must be \"host\" or \"engine\", got {nms!r}")
    if nms == "engine" and spec.task != "detection":
        raise EnginesmithError(f"{where}: nms = \"engine\" is for detectors; {spec.name} is a {spec.task} model")
    num_classes = merged.get("num_classes")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise EnginesmithError(f"{where}: num_classes must be a whole number >= 1, got {num_classes!r}")
    method = _str(merged.get("method"), "method", where) if "method" in table else spec.name
    targets = _choices(merged.get("targets", list(DEFAULT_TARGETS)), BENCH_TARGETS, "targets", where)
    return ModelEntry(
        model=spec.name, method=method or spec.name, input_sizes=sizes_t, targets=targets,
        devices=parse_devices(merged.get("device"), targets, where),
        precisions=_choices(merged.get("precisions", list(DEFAULT_PRECISIONS)), BENCH_PRECISIONS, "precisions", where),
        batches=parse_batches(merged.get("batches", list(DEFAULT_BATCHES)), where),
        weights=_str(merged.get("weights"), "weights", where), dataset=_str(merged.get("dataset"), "dataset", where),
        split=_str(merged.get("split", DEFAULT_SPLIT), "split", where) or DEFAULT_SPLIT,
        calib=_str(merged.get("calib"), "calib", where), nms=nms, num_classes=num_classes, where=where,
    )


def load_suite(path: Path) -> Suite:
    """Read and validate a suite file; every mistake is a one-line error naming the file and entry."""
    path = Path(path)
    if not path.is_file():
        raise EnginesmithError(f"suite file not found: {path} (see benchmarks/suites/ for examples)")
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise EnginesmithError(f"reading suite {path} needs Python 3.11+ (tomllib) or `pip install tomli`")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise EnginesmithError(f"{path} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EnginesmithError(f"cannot read suite {path}: {e}") from None
    unknown = [k for k in data if k not in ("suite", "model")]
    if unknown:
        raise EnginesmithError(f"{path}: unknown table {unknown[0]!r}; a suite has one [suite] table and [[model]] entries")
    head = data.get("suite", {})
    if not isinstance(head, dict):
        raise EnginesmithError(f"{path}: 'suite' must be a table ([suite])")
    _check_keys(head, SUITE_KEYS, f"{path} [suite]")
    models = data.get("model", [])
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise EnginesmithError(f"{path}: no models; add [[model]] tables with model = \"NAME\"")
    calib_size = head.get("calib_size", DEFAULT_CALIB_SIZE)
    if isinstance(calib_size, bool) or not isinstance(calib_size, int) or calib_size < 1:
        raise EnginesmithError(f"{path} [suite]: calib_size must be a whole number >= 1, got {calib_size!r}")
    defaults = {k: v for k, v in head.items() if k in MODEL_KEYS}
    entries = tuple(_entry(m, defaults, f"{path} [[model]] #{i + 1}") for i, m in enumerate(models))
    name = _str(head.get("name"), "name", f"{path} [suite]") or path.stem
    return Suite(name=name, entries=entries, description=str(head.get("description", "")), calib_size=calib_size,
                 source=path)


def suite_from_args(models: list[str], targets: tuple[str, ...] = DEFAULT_TARGETS,
                    precisions: tuple[str, ...] = DEFAULT_PRECISIONS, batches: tuple[int, ...] = DEFAULT_BATCHES,
                    input_sizes: tuple[tuple[int, int], ...] = (), dataset: str | None = None,
                    split: str = DEFAULT_SPLIT, nms: str = "host", calib_size: int = DEFAULT_CALIB_SIZE) -> Suite:
    """The suite `enginesmith bench MODEL... --targets ... --precisions ... --batch ...` describes. A MODEL
    may carry its input size as MODEL@SIZE (yolov3@320, yolov3-tiny@64x64); --input-size sets all."""
    if not models:
        raise EnginesmithError("give one or more MODEL names, or --suite FILE")
    table: dict[str, Any] = {"targets": list(targets), "precisions": list(precisions), "batches": list(batches),
                             "split": split, "nms": nms}
    if dataset is not None:
        table["dataset"] = str(dataset)
    entries = []
    for item in models:
        name, _, size = item.partition("@")
        sizes = [size] if size else [f"{h}x{w}" for h, w in input_sizes]
        if size and input_sizes:
            raise EnginesmithError(f"{item}: give the input size either as MODEL@SIZE or with --input-size, not both")
        entries.append(_entry({"model": name, "input_sizes": sizes}, table, "the command line"))
    return Suite(name="command-line", entries=tuple(entries), calib_size=calib_size)


def override(suite: Suite, models: list[str] | None = None, targets: tuple[str, ...] | None = None,
             precisions: tuple[str, ...] | None = None, batches: tuple[int, ...] | None = None,
             input_sizes: tuple[tuple[int, int], ...] | None = None, split: str | None = None,
             device: str | None = None) -> Suite:
    """A suite cut to `models` (registered names or methods) and/or with targets/precisions/batches/sizes/split
    replaced (the command line's options over a suite file's); `device`: every row must run on that kind."""
    from dataclasses import replace

    entries = list(suite.entries)
    if models:
        wanted = {m.strip().lower() for m in models}
        entries = [e for e in entries if e.model in wanted or e.method.lower() in wanted]
        missing = wanted - {e.model for e in entries} - {e.method.lower() for e in entries}
        if missing:
            raise EnginesmithError(f"{sorted(missing)[0]!r} is not in suite {suite.name}; its models are "
                                   f"{', '.join(dict.fromkeys(e.model for e in suite.entries))}")
    new = []
    for e in entries:
        changes: dict[str, Any] = {}
        if targets:
            changes["targets"] = _choices(list(targets), BENCH_TARGETS, "targets", "--targets")
        if precisions:
            changes["precisions"] = _choices(list(precisions), BENCH_PRECISIONS, "precisions", "--precisions")
        if batches:
            changes["batches"] = parse_batches(batches, "--batch")
        if input_sizes:
            changes["input_sizes"] = tuple(input_sizes)
        if split:
            changes["split"] = split
        if device:
            changes["devices"] = parse_devices(device, changes.get("targets", e.targets), "--device")
        new.append(replace(e, **changes))
    return replace(suite, entries=tuple(new))


# ------------------------------------------------------------------------------------------ expanding


def expand_vars(text: str, env: Mapping[str, str], what: str) -> str:
    """Replace ${NAME} / ${NAME:-default} with environment values; an unset NAME without default is an error."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise EnginesmithError(f"{what} is {text!r} but ${name} is not set; export {name}=PATH or give it on the "
                               "command line (--weights MODEL=PATH, --dataset DIR)")

    return _VAR.sub(sub, text)


def parse_weights(items: list[str] | None, models: list[str]) -> dict[str, Path]:
    """--weights values: 'PATH' (only with one model) or 'MODEL=PATH' -> {model: path}."""
    out: dict[str, Path] = {}
    for item in items or []:
        if "=" in item and not Path(item).exists():
            name, _, path = item.partition("=")
            out[registry.get(name.strip()).name] = Path(path.strip())
        elif len(set(models)) == 1:
            out[models[0]] = Path(item)
        else:
            raise EnginesmithError(f"--weights {item!r}: with several models write MODEL=PATH (models: "
                                   f"{', '.join(dict.fromkeys(models))})")
    return out


def parse_per_model(items: list[str] | None, models: list[str], option: str) -> dict[str, str]:
    """Values of a per-model option: 'VALUE' (only with one model) or 'MODEL=VALUE' -> {model: value}."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" in item:
            name, _, value = item.partition("=")
            out[registry.get(name.strip()).name] = value.strip()
        elif len(set(models)) == 1:
            out[models[0]] = item
        else:
            raise EnginesmithError(f"{option} {item!r}: with several models write MODEL=VALUE (models: "
                                   f"{', '.join(dict.fromkeys(models))})")
    return out


def parse_preprocess(channels: list[str] | None, mean: list[str] | None, std: list[str] | None,
                     models: list[str]) -> dict[str, PreprocessOverride]:
    """--channels / --mean / --std ('VALUE' for one model, or 'MODEL=VALUE') -> {model: PreprocessOverride}."""
    c, m, s = (parse_per_model(v, models, o) for v, o in ((channels, "--channels"), (mean, "--mean"), (std, "--std")))
    return {name: make_override(c.get(name), m.get(name), s.get(name)) for name in dict.fromkeys([*c, *m, *s])}


def _path(text: str | None, env: Mapping[str, str], what: str) -> str | None:
    return None if text is None else expand_vars(text, env, what)


def _precisions(target: str, wanted: tuple[str, ...]) -> tuple[str, ...]:
    """What `target` runs of `wanted`: PyTorch targets always run fp32 (the ratios' baseline) and
    torch-cuda / torch-compile fp16 when asked; engines run what they build of `wanted` (targets.py)."""
    if target in BASELINES:
        return tuple(p for p in BASELINES[target].precisions if p == "fp32" or p in wanted)
    return tuple(p for p in wanted if p in TARGETS[target].precisions) if target in TARGETS else wanted


def _not_run(target: str, wanted: tuple[str, ...]) -> Skipped | None:
    """The precisions of `wanted` that `target` does not run, as one Skipped line (None when it runs all)."""
    left = [p for p in wanted if p not in _precisions(target, wanted)]
    if not left:
        return None
    if target in BASELINES:
        return Skipped(f"{target}/{','.join(left)}", f"{target} runs {' and '.join(BASELINES[target].precisions)} "
                                                     "only (PyTorch)")
    return Skipped(f"{target}/{','.join(left)}", f"{TARGETS[target].display} does not build {' or '.join(left)}")


def plan(suite: Suite, weights: Mapping[str, Path] | None = None, dataset: Path | str | None = None,
         env: Mapping[str, str] | None = None, allow_two_stage: bool = False,
         preprocess: Mapping[str, PreprocessOverride] | None = None) -> tuple[list[Run], list[Skipped]]:
    """Expand `suite` into runs (order: model entry, size, batch, target, precision) and the skipped
    combinations with their reasons. `weights`/`dataset` (the command line) override the suite's;
    `preprocess` ({model: --channels/--mean/--std}) applies to that model's builds and PyTorch runs."""
    env = os.environ if env is None else env
    weights = dict(weights or {})
    runs: list[Run] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for e in suite.entries:
        spec = registry.get(e.model)
        if spec.two_stage and not allow_two_stage:
            raise EnginesmithError(f"{e.where}: {spec.name} has host stages around its engine (selective search, "
                                   "region warps, NMS); measure it with `python -m enginesmith.benchmarks.proposal_arc "
                                   "--suite FILE` (benchmarks/suites/rcnn-arc.toml)")
        if (preprocess or {}).get(spec.name) is not None:  # a wrong-length --mean or a gray model's --channels: now
            resolve_preprocess(spec.preprocess, preprocess[spec.name], None, spec.name)  # type: ignore[index]
        w_text = str(weights[e.model]) if e.model in weights else _path(e.weights, env, f"{e.where}: weights")
        d_text = str(dataset) if dataset is not None else _path(e.dataset, env, f"{e.where}: dataset")
        c_text = _path(e.calib, env, f"{e.where}: calib")
        w = Path(w_text).expanduser() if w_text else None
        if w is not None and not w.is_file():
            raise EnginesmithError(f"{e.where}: weights file not found: {w}")
        d: Path | str | None = None
        if d_text:
            d = d_text if (d_text == "digits" and spec.task == "classification" and not Path(d_text).exists()) \
                else Path(d_text).expanduser()
            if isinstance(d, Path) and not d.exists():
                raise EnginesmithError(f"{e.where}: dataset not found: {d}")
        c = Path(c_text).expanduser() if c_text else None
        if c is not None and not c.exists():
            raise EnginesmithError(f"{e.where}: calibration data not found: {c}")
        if any(PRECISIONS[p].searches for p in e.precisions) and (d is None or w is None):
            raise EnginesmithError(f"{e.where}: precision mixed searches by the task metric; give weights and a dataset")
        for size in e.input_sizes or (tuple(spec.input_size),):
            size = (int(size[0]), int(size[1]))
            for batch in e.batches:
                for target in e.targets:
                    for precision in _precisions(target, e.precisions):
                        run = Run(model=spec.name, method=e.method, input_size=size, target=target, precision=precision,
                                  batch=batch, task=spec.task, weights=w, dataset=d, split=e.split, calib=c,
                                  nms=e.nms if spec.task == "detection" else "host", num_classes=e.num_classes,
                                  preprocess=(preprocess or {}).get(spec.name), device=e.device_for(target))
                        if run.key in seen:
                            raise EnginesmithError(f"{e.where}: {run.key} is listed twice in suite {suite.name}")
                        seen.add(run.key)
                        if batch > 1 and spec.static_batch:
                            skipped.append(Skipped(run.key, f"{spec.name} is exported with batch 1 only"))
                            continue
                        runs.append(run)
        for target in e.targets:
            not_run = _not_run(target, e.precisions)
            if not_run is not None:
                skipped.append(Skipped(f"{e.model}/{not_run.key}", not_run.reason))
    if not runs:
        raise EnginesmithError(f"suite {suite.name} has nothing to run"
                               + (f": {skipped[0].key} skipped ({skipped[0].reason})" if skipped else ""))
    return runs, skipped


__all__ = ["Suite", "ModelEntry", "Run", "Skipped", "load_suite", "suite_from_args", "override", "plan",
           "parse_weights", "parse_per_model", "parse_preprocess", "parse_size", "split_list", "parse_batches", "expand_vars", "BASELINES", "BENCH_TARGETS",
           "GPU_TARGETS", "DEFAULT_TARGETS", "DEFAULT_PRECISIONS", "DEFAULT_BATCHES"]

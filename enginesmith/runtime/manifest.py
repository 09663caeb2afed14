"""Read an engine folder's manifest.json (written by `enginesmith build`) and check this machine can run it.

Torch-free: json, numpy and the standard library. An engine folder is untrusted input: every field the
runtime reads is checked by type and value (`validate_manifest`) and every file it opens must resolve
inside the folder. Every refusal is a one-line EnginesmithError that says what to do: a folder that is
not an engine, a malformed or tampered manifest, an engine file outside the folder, an engine whose
backend is not installed, a TensorRT engine built for another TensorRT version or GPU.

Longer than 400 lines: every check of an untrusted manifest, so the whole schema the runtime reads is in
one file.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from enginesmith.backends.targets import PRECISIONS, TARGETS
from enginesmith.errors import EnginesmithError
from enginesmith.runtime.preprocess import PreprocessSpec
from enginesmith.runtime.proposals import MODES
from enginesmith.runtime.two_stage import KINDS

MANIFEST = "manifest.json"
TASKS = ("detection", "classification", "dense")

# The engine-folder marker the build writes at the top level of every engine manifest.json: what tells an
# engine folder from any other folder holding a manifest.json (a stage cache entry, a user's folder), and
# which manifest layout it has. Bump SCHEMA_VERSION when a field the runtime reads changes meaning.
ENGINE_SCHEMA = "enginesmith-engine"
SCHEMA_VERSION = 1

NMS_MODES = ("host", "engine")
RESIZE_MODES = ("letterbox", "stretch", "center_crop")
COLOR_ORDERS = ("RGB", "BGR", "GRAY")
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a real manifest is a few KB; refuse before parsing anything huge
MAX_SIDE = 16384  # largest input height/width accepted (an absurd size would only exhaust memory)
MAX_BATCH = 4096  # largest static batch accepted (the runtime pads every call to it)



@dataclass(frozen=True)
class EngineInfo:
    """What the runtime needs from an engine folder's manifest.

    input_shape: [batch, C, H, W]; batch is an int (static) or None (a dynamic batch axis).
    nms: "engine" (the engine returns detections [N, K, 6] + num_detections [N]), "host" (it returns
    boxes [N, A, 4] x1y1x2y2 input pixels + scores [N, A, C]; NMS runs in numpy) or None (not a detector).
    nms_params: the in-engine NMS thresholds ({"iou", "score", "max_detections"}) when nms == "engine".
    """

    folder: Path
    model: str
    task: str
    target: str
    precision: str
    engine_file: Path
    input_name: str
    batch: int | None
    channels: int
    outputs: tuple[str, ...]
    nms: str | None
    preprocess: PreprocessSpec
    class_names: tuple[str, ...]
    trained: bool | None = None
    nms_params: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, int] = field(default_factory=dict)  # settings the build fixed (Target.runtime_settings)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return self.preprocess.input_size

    def class_name(self, class_id: int) -> str:
        """The manifest's name for a class id, or "class <id>" when the engine has no names for it."""
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else f"class {class_id}"


def _folder_of(path: str | Path) -> Path:
    """The engine folder for a folder path or the path of its manifest.json."""
    p = Path(path)
    return p.parent if p.name == MANIFEST and p.is_file() else p


def _json_error(e: BaseException) -> str:
    """Why a file could not be parsed as JSON, in a few words (one line)."""
    if isinstance(e, RecursionError):
        return "JSON nested too deeply"
    if isinstance(e, ValueError) and not isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
        return "a number with too many digits"  # int() refuses more than sys.get_int_max_str_digits()
    return (str(e).splitlines() or [type(e).__name__])[0]


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """manifest.json of an engine folder as a dict; anything else is a one-line EnginesmithError.

    Only the JSON is read here; `validate_manifest` checks what it says."""
    p = Path(folder)
    how = "build one with `enginesmith build MODEL --out DIR` and pass DIR"
    if not p.exists():
        raise EnginesmithError(f"engine folder not found: {p}; {how}")
    if p.is_file():
        if p.name == MANIFEST:
            p = p.parent
        else:
            raise EnginesmithError(f"{p} is a file, not an engine folder; pass the folder that holds {MANIFEST} "
                                   f"and the engine ({how})")
    m = p / MANIFEST
    if not m.is_file():
        raise EnginesmithError(f"{p} is not an engine folder (no {MANIFEST}); {how}")
    try:
        size = m.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise EnginesmithError(f"{m} is {size} bytes, not an engine manifest (those are a few KB); rebuild the "
                                   "engine")
        data = json.loads(m.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise EnginesmithError(f"cannot read {m}: {_json_error(e)}; rebuild the engine") from None
    if not isinstance(data, dict):
        raise EnginesmithError(f"{m} is not an engine manifest (not a JSON object); rebuild the engine")
    return data


def is_engine_folder(path: str | Path) -> bool:
    """True when `path` is a folder holding a manifest.json that is a JSON object with the engine schema
    marker (schema == ENGINE_SCHEMA and an int schema_version, any version). Never raises: anything
    unreadable is False. The build uses it to decide whether `--out DIR` may be replaced."""
    try:
        p = Path(path)
        m = p / MANIFEST
        if not p.is_dir() or not m.is_file() or m.stat().st_size > MAX_MANIFEST_BYTES:
            return False
        data = json.loads(m.read_bytes().decode("utf-8"))
        return isinstance(data, dict) and data.get("schema") == ENGINE_SCHEMA and _is_int(data.get("schema_version"))
    except Exception:  # noqa: BLE001 - documented: never raises (OSError, ValueError, RecursionError, ...)
        return False


# -- validation -------------------------------------------------------------------------------------------
def _show(value: Any) -> str:
    """A value as it would appear in JSON, cut to one short line."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    text = text.replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


class _Checker:
    """One-line refusals naming `<folder>/manifest.json` and the field."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = folder / MANIFEST

    def fail(self, name: str, must: str, value: Any, missing: bool = False) -> EnginesmithError:
        got = "nothing (missing)" if missing else _show(value)
        return EnginesmithError(f"{self.where}: field {name} must be {must}, got {got}; rebuild the engine")

    def get(self, d: dict[str, Any], key: str, name: str, must: str) -> Any:
        if key not in d:
            raise self.fail(name, must, None, missing=True)
        return d[key]

    def string(self, v: Any, name: str, choices: tuple[str, ...] | None = None) -> str:
        must = f"one of {', '.join(choices)}" if choices else "a non-empty string"
        if not isinstance(v, str) or not v or (choices is not None and v not in choices):
            raise self.fail(name, must, v)
        return v

    def integer(self, v: Any, name: str, lo: int, hi: int | None = None) -> int:
        must = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            raise self.fail(name, must, v)
        return int(v)

    def number(self, v: Any, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
        must = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
        if not _is_number(v) or v > hi or v < lo or (lo_open and v == lo):
            raise self.fail(name, must, v)
        return float(v)

    def mapping(self, v: Any, name: str, optional: bool = False) -> dict[str, Any]:
        if v is None and optional:
            return {}
        if not isinstance(v, dict):
            raise self.fail(name, "a JSON object" + (" or null" if optional else ""), v)
        return v

    def string_list(self, v: Any, name: str, unique: bool = False, empty_ok: bool = False) -> list[str]:
        if (not isinstance(v, list) or not all(isinstance(s, str) and (s or empty_ok) for s in v)
                or (unique and len(set(v)) != len(v))):
            kind = "strings" if empty_ok else "non-empty strings"
            raise self.fail(name, "a list of " + ("distinct " if unique else "") + kind, v)
        return v


def _contained(c: _Checker, rel: Any, name: str) -> Path:
    """folder / rel, where rel must be a relative path that resolves (symlinks followed) inside the folder."""
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise c.fail(name, "the name of a file inside the engine folder", rel)
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        raise EnginesmithError(f"{c.where}: field {name} is an absolute path ({_show(rel)}); an engine folder names "
                               "its files relative to itself: rebuild the engine")
    if ".." in PurePosixPath(rel.replace("\\", "/")).parts:
        raise EnginesmithError(f"{c.where}: field {name} ({_show(rel)}) leads out of the engine folder; an engine "
                               "folder's files must be inside it: rebuild the engine")
    path = c.folder / rel
    loop = EnginesmithError(f"{c.where}: field {name} ({_show(rel)}) cannot be resolved (a symlink loop); rebuild "
                            "the engine")
    try:
        root, target = c.folder.resolve(), path.resolve()
    except (OSError, RuntimeError):  # Python < 3.13: a symlink loop
        raise loop from None
    try:
        path.stat()
    except OSError as e:  # Python >= 3.13 resolves a loop without raising; stat() still meets ELOOP
        if e.errno == errno.ELOOP:
            raise loop from None
    if target != root and root not in target.parents:
        raise EnginesmithError(f"{c.where}: field {name} ({_show(rel)}) resolves to {target}, outside the engine "
                               "folder (a symlink?); an engine folder's files must be inside it: rebuild the engine")
    if target == root:
        raise c.fail(name, "the name of a file inside the engine folder", rel)
    return path


def _check_preprocess(c: _Checker, pre: Any) -> PreprocessSpec:
    pre = c.mapping(pre, "preprocess")
    size = c.get(pre, "input_size", "preprocess.input_size", "[height, width]")
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) and 1 <= v <= MAX_SIDE for v in size):
        raise c.fail("preprocess.input_size", f"[height, width] with ints in [1, {MAX_SIDE}]", size)
    c.string(c.get(pre, "resize", "preprocess.resize", "a resize mode"), "preprocess.resize", RESIZE_MODES)
    c.string(c.get(pre, "color", "preprocess.color", "a colour order"), "preprocess.color", COLOR_ORDERS)
    scale = c.get(pre, "scale", "preprocess.scale", "a positive number")
    if not _is_number(scale) or scale <= 0:
        raise c.fail("preprocess.scale", "a positive number", scale)
    for key in ("mean", "std"):
        v = c.get(pre, key, f"preprocess.{key}", "a list of 1 or 3 numbers")
        if (not isinstance(v, list) or len(v) not in (1, 3) or not all(_is_number(x) for x in v)
                or (key == "std" and any(x == 0 for x in v))):
            must = "a list of 1 or 3 finite numbers" + (", none zero" if key == "std" else "")
            raise c.fail(f"preprocess.{key}", must, v)
    c.integer(c.get(pre, "pad_value", "preprocess.pad_value", "an integer"), "preprocess.pad_value", 0, 255)
    if "crop_fraction" in pre:
        c.number(pre["crop_fraction"], "preprocess.crop_fraction", 0.0, 1.0, lo_open=True)
    try:
        return PreprocessSpec.from_dict(pre)
    except (KeyError, TypeError, ValueError, EnginesmithError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise EnginesmithError(f"{c.where}: malformed preprocess entry ({reason}); rebuild the engine") from None


def _check_input(c: _Checker, inp: Any, name: str, spec: PreprocessSpec | None) -> None:
    inp = c.mapping(inp, name)
    c.string(c.get(inp, "name", f"{name}.name", "a non-empty string"), f"{name}.name")
    shape = c.get(inp, "shape", f"{name}.shape", "a list")
    must = (f'a list of 4 (batch, C, H, W) with positive ints (batch may be "batch"; batch <= {MAX_BATCH}, '
            f"C 1 or 3, H and W <= {MAX_SIDE})")
    if spec is None:  # a second input (two-stage rois): dims are positive ints or axis names
        if not isinstance(shape, list) or not shape or not all((_is_int(v) and v >= 1) or (isinstance(v, str) and v)
                                                                for v in shape):
            raise c.fail(f"{name}.shape", "a list of positive ints or axis names", shape)
        return
    if not isinstance(shape, list) or len(shape) != 4:
        raise c.fail(f"{name}.shape", must, shape)
    batch, ch, h, w = shape
    if not (batch == "batch" or (_is_int(batch) and 1 <= batch <= MAX_BATCH)) or ch not in (1, 3) or not _is_int(ch) \
            or not all(_is_int(v) and 1 <= v <= MAX_SIDE for v in (h, w)):
        raise c.fail(f"{name}.shape", must, shape)
    if ch != spec.channels or [h, w] != list(spec.input_size):
        channels = f"{spec.channels} channel{'' if spec.channels == 1 else 's'}"
        raise EnginesmithError(f"{c.where}: field {name}.shape {_show(shape)} disagrees with preprocess (color "
                               f"{spec.color}: {channels}, input_size {list(spec.input_size)}); rebuild the engine")


def _check_stages(c: _Checker, stages: Any, nms: str | None) -> None:
    if stages is None:
        return
    if not isinstance(stages, list):
        raise c.fail("stages", "a list of stage records", stages)
    for i, stage in enumerate(stages):
        where = f"stages[{i}]"
        stage = c.mapping(stage, where)
        kind = c.string(c.get(stage, "stage", f"{where}.stage", "a stage name"), f"{where}.stage")
        parts = {k: c.mapping(stage.get(k), f"{where}.{k}", optional=True) for k in ("params", "metrics", "tools")}
        if kind == "nms":
            merged = {**parts["metrics"], **parts["params"]}
            for k in ("iou", "score", "max_detections", "class_agnostic"):
                if k not in merged:
                    if nms == "engine" and k != "class_agnostic":
                        raise c.fail(f"{where}.params.{k}", "the in-engine NMS setting", None, missing=True)
                    continue
                for part in ("params", "metrics"):
                    if k not in parts[part]:
                        continue
                    v, label = parts[part][k], f"{where}.{part}.{k}"
                    if k == "max_detections":
                        c.integer(v, label, 1)
                    elif k == "class_agnostic":
                        if not isinstance(v, bool):
                            raise c.fail(label, "true or false", v)
                    else:
                        c.number(v, label, 0.0, 1.0)
        if kind == "engine" and parts["params"].get("profile") not in (None, []):
            profile = parts["params"]["profile"]
            if not isinstance(profile, list) or not all(_is_int(v) and v >= 1 for v in profile):
                raise c.fail(f"{where}.params.profile", "[min, opt, max] positive batch sizes", profile)


def _check_two_stage(c: _Checker, raw: dict[str, Any], task: str, class_names: list[str]) -> None:
    ts = c.mapping(raw["two_stage"], "two_stage")
    c.string(c.get(ts, "kind", "two_stage.kind", "a two-stage kind"), "two_stage.kind", KINDS)
    prop = c.mapping(ts.get("proposals"), "two_stage.proposals", optional=True)
    if "method" in prop:
        c.string(prop["method"], "two_stage.proposals.method", ("selective-search",))
    if "mode" in prop:
        c.string(prop["mode"], "two_stage.proposals.mode", MODES)
    if "max_proposals" in prop:
        c.integer(prop["max_proposals"], "two_stage.proposals.max_proposals", 1)
    if raw.get("max_rois") is not None:
        c.integer(raw["max_rois"], "max_rois", 1)
    if task != "detection":
        raise c.fail("task", "detection for a two-stage (R-CNN / Fast R-CNN) engine", task)
    if not class_names:
        raise c.fail("class_names", "a non-empty list of strings for a two-stage engine", class_names)


def _check_inputs(c: _Checker, inputs: Any) -> None:
    """manifest["inputs"] (every input of a multi-input engine, as the build writes it for two-stage models)."""
    if inputs is None:
        return
    if not isinstance(inputs, list) or not inputs:
        raise c.fail("inputs", 'a non-empty list of {"name", "shape"} entries', inputs)
    for i, entry in enumerate(inputs):
        _check_input(c, entry, f"inputs[{i}]", None)


def validate_manifest(raw: dict[str, Any], where: Path) -> None:
    """Check every field the runtime reads from an engine manifest, by type and value.

    raw: the parsed manifest.json; where: the engine folder it came from (named in the messages; the
    files the manifest names are checked against it: relative, resolving inside it after symlinks, and
    present). Raises a one-line EnginesmithError naming the field: a missing or unknown schema marker
    (not an engine folder, or built before the marker existed), a schema_version newer than this
    runtime, a wrong-typed or out-of-range field, an engine path outside the folder."""
    folder = Path(where)
    c = _Checker(folder)
    _check_schema(c, raw, folder)
    task, target = _check_task_and_target(raw, folder)
    c.string(raw["precision"], "precision", tuple(PRECISIONS))
    if "model" in raw:
        c.string(raw["model"], "model")
    spec = _check_preprocess(c, raw["preprocess"])
    _check_input(c, raw["input"], "input", spec)
    outputs = c.string_list(raw["outputs"], "outputs", unique=True)
    if not outputs:
        raise c.fail("outputs", "a non-empty list of the engine's output names", outputs)
    class_names = c.string_list(raw["class_names"], "class_names", empty_ok=True)
    nms = _check_nms(c, raw, task, outputs)
    if "trained" in raw and raw["trained"] is not None and not isinstance(raw["trained"], bool):
        raise c.fail("trained", "true, false or null", raw["trained"])
    device = c.mapping(raw.get("device"), "device", optional=True)
    for k in ("tensorrt", "gpu", "compute_capability"):
        if device.get(k) is not None and not isinstance(device[k], str):
            raise c.fail(f"device.{k}", "a string or null", device[k])
    _check_stages(c, raw.get("stages"), nms if task == "detection" else None)
    _check_inputs(c, raw.get("inputs"))
    _check_runtime(c, raw.get("runtime"), target)
    if "two_stage" in raw:
        _check_two_stage(c, raw, task, class_names)
    _check_engine_files(c, raw, target)


MAX_RUNTIME_SETTING = 1024  # threads / streams: far above any CPU this runs on


def _check_runtime(c: _Checker, runtime: Any, target: str) -> dict[str, int]:
    """`runtime` (optional): {setting: positive int} with settings the target takes (Target.runtime_settings)."""
    settings = c.mapping(runtime, "runtime", optional=True)
    allowed = TARGETS[target].runtime_settings
    for k, v in settings.items():
        if k not in allowed:
            raise c.fail(f"runtime.{k}", f"absent: {target} engines take {', '.join(allowed) or 'no runtime settings'}", v)
        c.integer(v, f"runtime.{k}", 1, MAX_RUNTIME_SETTING)
    return dict(settings)


def _check_schema(c: _Checker, raw: Any, folder: Path) -> None:
    """The engine-folder marker, a schema_version this runtime reads, and the fields every engine has."""
    if not isinstance(raw, dict):
        raise EnginesmithError(f"{c.where} is not an engine manifest (not a JSON object); rebuild the engine")
    if raw.get("schema") != ENGINE_SCHEMA:
        what = "no schema marker" if "schema" not in raw else f"schema {_show(raw['schema'])}, not {ENGINE_SCHEMA!r}"
        raise EnginesmithError(f"{folder} is not an enginesmith engine folder, or built by an older enginesmith "
                               f"({what} in {MANIFEST}); rebuild it with `enginesmith build MODEL --out DIR`")
    version = raw.get("schema_version")
    if not _is_int(version) or version < 1:
        raise c.fail("schema_version", "a positive integer", version, missing="schema_version" not in raw)
    if version > SCHEMA_VERSION:
        raise EnginesmithError(f"{c.where}: schema_version {version} is newer than this enginesmith reads (up to "
                               f"{SCHEMA_VERSION}): upgrade enginesmith (pip install -U enginesmith) or rebuild the "
                               "engine with this version")
    need = ("task", "target", "precision", "engine", "input", "outputs", "preprocess", "class_names")
    missing = [k for k in need if k not in raw]
    if missing:
        raise EnginesmithError(f"{c.where} lacks {', '.join(missing)}: not an engine manifest of this enginesmith "
                               "version; rebuild the engine with `enginesmith build`")


def _check_task_and_target(raw: dict[str, Any], folder: Path) -> tuple[str, str]:
    task, target = raw["task"], raw["target"]
    if not isinstance(task, str) or task not in TASKS:
        shown = repr(task) if isinstance(task, str) else _show(task)
        raise EnginesmithError(f"{folder}: unknown task {shown} in {MANIFEST}; this runtime knows {', '.join(TASKS)}")
    if not isinstance(target, str) or target not in TARGETS:
        shown = repr(target) if isinstance(target, str) else _show(target)
        raise EnginesmithError(f"{folder}: unknown target {shown} in {MANIFEST}; this runtime runs "
                               f"{', '.join(TARGETS)} engines")
    return task, target


def _check_nms(c: _Checker, raw: dict[str, Any], task: str, outputs: list[str]) -> Any:
    """`nms`: required for detectors ("engine" needs the detections outputs); a known value or null otherwise."""
    nms = raw.get("nms")
    if task == "detection":
        if "nms" not in raw:
            raise c.fail("nms", "one of host, engine (a detection engine)", None, missing=True)
        c.string(nms, "nms", NMS_MODES)
        if nms == "engine" and not {"detections", "num_detections"} <= set(outputs):
            raise c.fail("outputs", 'a list holding "detections" and "num_detections" (nms is "engine")', outputs)
    elif nms is not None:  # not read for other tasks (the build writes null); still a known value
        c.string(nms, "nms", NMS_MODES)
    return nms


def _check_engine_files(c: _Checker, raw: dict[str, Any], target: str) -> None:
    """The engine file (and the files beside it, OpenVINO's weights) must be inside the folder."""
    engine_file = _contained(c, raw["engine"], "engine")
    if not engine_file.is_file():
        raise EnginesmithError(f"engine file missing: {engine_file} (named in {MANIFEST}); copy the whole engine "
                               "folder, or rebuild it")
    for suffix in TARGETS[target].engine_companions:  # OpenVINO: model.bin, the weights beside model.xml
        companion = engine_file.with_suffix(suffix)
        if companion.exists() or companion.is_symlink():
            _contained(c, str(Path(str(raw["engine"])).with_suffix(suffix)), f"engine (its {suffix} weights)")


def _nms_params(manifest: dict[str, Any]) -> dict[str, Any]:
    for stage in manifest.get("stages") or []:
        if stage.get("stage") == "nms":
            metrics = stage.get("metrics") or {}
            params = {k: metrics[k] for k in ("iou", "score", "max_detections") if k in metrics}
            params.update({k: v for k, v in (stage.get("params") or {}).items()
                           if k in ("iou", "score", "max_detections", "class_agnostic")})
            return params
    return {}


def engine_info(folder: str | Path) -> EngineInfo:
    """Parse and check an engine folder's manifest (no backend is imported here): `read_manifest`, then
    `validate_manifest` (schema marker, every field's type and value, engine file inside the folder)."""
    raw = read_manifest(folder)
    folder = _folder_of(folder)
    validate_manifest(raw, folder)
    spec = PreprocessSpec.from_dict(raw["preprocess"])
    shape = raw["input"]["shape"]
    return EngineInfo(
        folder=folder, model=str(raw.get("model", folder.name)), task=raw["task"], target=raw["target"],
        precision=raw["precision"], engine_file=folder / raw["engine"], input_name=raw["input"]["name"],
        batch=shape[0] if _is_int(shape[0]) else None, channels=int(shape[1]), outputs=tuple(raw["outputs"]),
        nms=raw.get("nms"), preprocess=spec, class_names=tuple(raw["class_names"]), trained=raw.get("trained"),
        nms_params=_nms_params(raw), runtime=dict(raw.get("runtime") or {}), raw=raw,
    )


# -- can this machine run it? -------------------------------------------------------------------------
def check_backend_installed(info: EngineInfo) -> None:
    """The engine's backend library must be importable; found without importing it (no side effects)."""
    target = TARGETS[info.target]
    module, hint = target.runtime_package, target.install_hint
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        found = False
    if not found:
        raise EnginesmithError(f"{info.folder}: this engine runs on {target.display}, which is not installed "
                               f"here (no module {module!r}); {hint}")


def check_runnable(info: EngineInfo) -> None:
    """Everything this machine must have for `info`'s engine, checked before loading it: a plan tied to its
    device (TensorRT) must meet the same tool version and GPU, and the backend library must be installed."""
    target = TARGETS[info.target]
    if target.check_device is not None:
        target.check_device(info.raw)
    check_backend_installed(info)

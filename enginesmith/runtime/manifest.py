"""Read an engine folder's manifest.json (written by `enginesmith build`) and check this machine can run it.

Torch-free: json, numpy and the standard library. Every refusal is a one-line EnginesmithError that
says what to do: a folder that is not an engine, an engine whose backend is not installed, a TensorRT
engine built for another TensorRT version or GPU.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from enginesmith.errors import EnginesmithError
from enginesmith.runtime.preprocess import PreprocessSpec

MANIFEST = "manifest.json"
TASKS = ("detection", "classification", "dense")
DISPLAY = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}

# target -> (Python module the backend needs, install hint)
BACKEND_PACKAGES = {
    "openvino": ("openvino", "pip install 'enginesmith[runtime-openvino]' (or: pip install openvino)"),
    "onnxruntime": ("onnxruntime", "pip install 'enginesmith[runtime-onnxruntime]' (or: pip install onnxruntime)"),
    "tensorrt": ("tensorrt", "install NVIDIA TensorRT 10+ and cuda-python on a machine with an NVIDIA GPU"),
}


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
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return self.preprocess.input_size

    def class_name(self, class_id: int) -> str:
        """The manifest's name for a class id, or "class <id>" when the engine has no names for it."""
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else f"class {class_id}"


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """manifest.json of an engine folder as a dict; anything else is a one-line EnginesmithError."""
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
        data = json.loads(m.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EnginesmithError(f"cannot read {m}: {str(e).splitlines()[0]}; rebuild the engine") from None
    if not isinstance(data, dict):
        raise EnginesmithError(f"{m} is not an engine manifest (not a JSON object); rebuild the engine")
    return data


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
    """Parse and check an engine folder's manifest (no backend is imported here)."""
    raw = read_manifest(folder)
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    need = ("task", "target", "engine", "input", "preprocess")
    missing = [k for k in need if k not in raw]
    if missing:
        raise EnginesmithError(f"{folder / MANIFEST} lacks {', '.join(missing)}: not an engine manifest of this "
                               "enginesmith version; rebuild the engine with `enginesmith build`")
    task, target = str(raw["task"]), str(raw["target"])
    if task not in TASKS:
        raise EnginesmithError(f"{folder}: unknown task {task!r} in {MANIFEST}; this runtime knows {', '.join(TASKS)}")
    if target not in BACKEND_PACKAGES:
        raise EnginesmithError(f"{folder}: unknown target {target!r} in {MANIFEST}; this runtime runs "
                               f"{', '.join(BACKEND_PACKAGES)} engines")
    engine_file = folder / str(raw["engine"])
    if not engine_file.is_file():
        raise EnginesmithError(f"engine file missing: {engine_file} (named in {MANIFEST}); copy the whole engine "
                               "folder, or rebuild it")
    try:
        spec = PreprocessSpec.from_dict(raw["preprocess"])
        shape = list(raw["input"]["shape"])
        input_name = str(raw["input"]["name"])
    except (KeyError, TypeError, ValueError) as e:
        raise EnginesmithError(f"{folder / MANIFEST}: malformed input/preprocess entry ({e}); rebuild the engine") from None
    batch = shape[0] if isinstance(shape[0], int) else None
    return EngineInfo(
        folder=folder, model=str(raw.get("model", folder.name)), task=task, target=target,
        precision=str(raw.get("precision", "fp32")), engine_file=engine_file, input_name=input_name, batch=batch,
        channels=int(shape[1]) if len(shape) > 1 else spec.channels, outputs=tuple(raw.get("outputs") or ()),
        nms=raw.get("nms"), preprocess=spec, class_names=tuple(str(c) for c in raw.get("class_names") or ()),
        trained=raw.get("trained"), nms_params=_nms_params(raw), raw=raw,
    )


# -- can this machine run it? -------------------------------------------------------------------------
def check_backend_installed(info: EngineInfo) -> None:
    """The engine's backend library must be importable; found without importing it (no side effects)."""
    module, hint = BACKEND_PACKAGES[info.target]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        found = False
    if not found:
        raise EnginesmithError(f"{info.folder}: this engine runs on {DISPLAY[info.target]}, which is not installed "
                               f"here (no module {module!r}); {hint}")


def recorded_tensorrt(manifest: dict[str, Any]) -> dict[str, str | None]:
    """What a TensorRT engine was built with: {"tensorrt", "gpu", "compute_capability"} (None when unrecorded).

    Read from manifest["device"] when present, else from the engine stage's recorded tools."""
    device = dict(manifest.get("device") or {})
    tools: dict[str, Any] = {}
    for stage in manifest.get("stages") or []:
        if stage.get("stage") == "engine":
            tools = stage.get("tools") or {}
    def pick(key: str, *alts: str) -> str | None:
        for src in (device, tools):
            for k in (key, *alts):
                if src.get(k) not in (None, ""):
                    return str(src[k])
        return None
    return {"tensorrt": pick("tensorrt"), "gpu": pick("gpu", "gpu_name"),
            "compute_capability": pick("compute_capability", "gpu_compute_capability")}


def _same_version(a: str, b: str) -> bool:
    """TensorRT plans load only in the TensorRT release that built them: compare major.minor.patch."""
    return a.split("+")[0].split(".")[:3] == b.split("+")[0].split(".")[:3]


def check_tensorrt_compat(recorded: dict[str, str | None], installed_version: str | None,
                          gpu: str | None, compute_capability: str | None) -> None:
    """Refuse a TensorRT engine built with another TensorRT version or for another GPU.

    recorded: `recorded_tensorrt(manifest)`; the rest describe this machine (None: unknown here, not
    checked). A manifest that records no TensorRT version cannot be trusted and is refused too."""
    if installed_version is None:
        raise EnginesmithError(f"this is a TensorRT engine, but TensorRT is not installed here; "
                               f"{BACKEND_PACKAGES['tensorrt'][1]}")
    built = recorded.get("tensorrt")
    if not built:
        raise EnginesmithError("this TensorRT engine's manifest does not record the TensorRT version that built "
                               "it, so it may not load here: rebuild for this device with `enginesmith build "
                               "--target tensorrt`")
    if not _same_version(built, installed_version):
        raise EnginesmithError(f"this engine was built with TensorRT {built}, this machine has TensorRT "
                               f"{installed_version}: rebuild for this device with `enginesmith build --target tensorrt`")
    rec_cc, rec_gpu = recorded.get("compute_capability"), recorded.get("gpu")
    if rec_cc and compute_capability and str(rec_cc) != str(compute_capability):
        raise EnginesmithError(f"this engine was built for compute capability {rec_cc} ({rec_gpu or 'unknown GPU'}), "
                               f"this GPU is {compute_capability} ({gpu or 'unknown'}): rebuild for this device "
                               "with `enginesmith build --target tensorrt`")
    if rec_gpu and gpu and rec_gpu.strip() != gpu.strip():
        raise EnginesmithError(f"this engine was built on a {rec_gpu}, this GPU is a {gpu}: rebuild for this device "
                               "with `enginesmith build --target tensorrt`")


def local_tensorrt_version() -> str | None:
    """The installed TensorRT version from package metadata (TensorRT is not imported)."""
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_libs"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def local_gpu() -> tuple[str | None, str | None]:
    """(GPU name, compute capability "8.9") of GPU 0 from nvidia-smi; (None, None) when it cannot be asked."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    first = next((ln for ln in out.splitlines() if ln.strip()), "")
    parts = [p.strip() for p in first.split(",")]
    return (parts[0] or None, parts[1] if len(parts) > 1 and parts[1] else None) if parts[0] else (None, None)


def check_runnable(info: EngineInfo) -> None:
    """Everything this machine must have for `info`'s engine, checked before loading it."""
    if info.target == "tensorrt":
        gpu, cc = local_gpu()
        check_tensorrt_compat(recorded_tensorrt(info.raw), local_tensorrt_version(), gpu, cc)
    check_backend_installed(info)

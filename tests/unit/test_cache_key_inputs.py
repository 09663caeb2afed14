"""Stage cache keys and content hashes (pipeline/artifacts.py) against hashlib on the same bytes and hand-written
JSON: what goes into a key, and that every input changes it."""

from __future__ import annotations

import hashlib
import json

import pytest

from enginesmith.pipeline import artifacts


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 64])
def test_sha256_file_is_hashlib_over_the_bytes_at_any_chunk_size(tmp_path, size):
    data = bytes(range(256)) * (size // 8 + 1)
    p = tmp_path / "blob.bin"
    p.write_bytes(data[:size])
    expect = hashlib.sha256(data[:size]).hexdigest()
    assert artifacts.sha256_file(p) == expect
    assert artifacts.sha256_file(p, chunk=8) == expect  # several chunks, a partial last one


def test_sha256_json_is_sorted_compact_json():
    obj = {"b": [1, 2.5, None], "a": {"y": True, "x": "s"}, "p": tmp_path_like()}
    text = '{"a": {"x": "s", "y": true}, "b": [1, 2.5, null], "p": "some/path"}'
    assert artifacts.sha256_json(obj) == hashlib.sha256(text.encode()).hexdigest()
    assert json.loads(text)["p"] == "some/path"


def tmp_path_like():
    from pathlib import PurePosixPath

    return PurePosixPath("some/path")  # not JSON: written as str()


def reference_key(stage, parents, params, tools):
    """The documented key: sha256 of the JSON of stage, parent hashes, parameters and tool versions (sorted keys)."""
    text = json.dumps({"parents": parents, "params": params, "stage": stage, "tools": tools}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def test_cache_key_is_sha256_of_its_inputs_and_each_input_changes_it(tmp_path):
    cache = artifacts.Cache(tmp_path)
    base = ("export", ["p" * 64, "q" * 64], {"opset": 17, "size": [416, 416]}, {"torch": "2.14.1", "onnx": "1.17"})
    key = cache.key(*base)
    assert key == reference_key(*base) and len(key) == 64
    assert cache.key("export", ["p" * 64, "q" * 64], {"size": [416, 416], "opset": 17},
                     {"onnx": "1.17", "torch": "2.14.1"}) == key  # dict order does not matter
    variants = [
        ("simplify",) + base[1:],
        (base[0], ["q" * 64, "p" * 64]) + base[2:],  # parent order matters
        (base[0], ["p" * 64]) + base[2:],
        (base[0], base[1], {"opset": 18, "size": [416, 416]}, base[3]),
        (base[0], base[1], {"opset": 17, "size": [416, 416], "batch": 1}, base[3]),
        base[:3] + ({"torch": "2.14.2", "onnx": "1.17"},),
        base[:3] + ({"torch": "2.14.1"},),
    ]
    keys = {cache.key(*v) for v in variants}
    assert len(keys) == len(variants) and key not in keys
    for v in variants:
        assert cache.key(*v) == reference_key(*v)


def test_tool_versions_reads_installed_metadata():
    import platform
    from importlib import metadata

    v = artifacts.tool_versions()
    assert v["python"] == platform.python_version()
    assert v["numpy"] == metadata.version("numpy") and v["torch"] == metadata.version("torch")
    assert set(v) <= {"enginesmith", "python", *artifacts.TOOL_PACKAGES}
    only = artifacts.tool_versions(["numpy", "no-such-package-xyz"])  # a missing package is left out
    assert only == {"enginesmith": v["enginesmith"], "python": v["python"], "numpy": metadata.version("numpy")}


def test_own_version_hashes_every_source_file():
    from pathlib import Path

    import enginesmith

    root = Path(enginesmith.__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):  # path relative to the package, then the bytes, file by file
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    assert artifacts.tool_versions([])["enginesmith"] == f"{enginesmith.__version__}+src.{h.hexdigest()[:12]}"


def test_cache_folder_is_stage_then_the_keys_first_24_hex_digits(tmp_path):
    cache = artifacts.Cache(tmp_path)
    key = cache.key("export", [], {}, {})
    assert cache.folder("export", key) == tmp_path / "export" / key[:24]
    assert len(cache.folder("export", key).name) == 24

"""Content-addressed, atomic stage artifacts."""

from __future__ import annotations

import hashlib
import json

import pytest

from enginesmith.pipeline.artifacts import Cache, StageResult, publish_folder


def _writer(text: str, calls: list):
    def produce(tmp):
        calls.append(tmp)
        (tmp / "out.txt").write_text(text)
        return StageResult(["out.txt"], {"n": len(text)})

    return produce


def test_same_key_is_reused_and_hash_is_of_the_bytes(tmp_path):
    cache, calls = Cache(tmp_path), []
    a = cache.run("s", ["p1"], {"x": 1}, _writer("hello", calls), tools={"t": "1"})
    b = cache.run("s", ["p1"], {"x": 1}, _writer("other", calls), tools={"t": "1"})
    assert len(calls) == 1 and not a.cached and b.cached
    assert b.file.read_text() == "hello"
    expected = hashlib.sha256(b"out.txt" + hashlib.sha256(b"hello").hexdigest().encode()).hexdigest()
    assert a.sha256 == expected
    manifest = json.loads((a.folder / "manifest.json").read_text())
    assert manifest["parents"] == ["p1"] and manifest["params"] == {"x": 1} and manifest["tools"] == {"t": "1"}


@pytest.mark.parametrize("change", [{"parents": ["p2"]}, {"params": {"x": 2}}, {"tools": {"t": "2"}}])
def test_any_change_in_parents_params_or_tools_rebuilds(tmp_path, change):
    cache, calls = Cache(tmp_path), []
    base = {"parents": ["p1"], "params": {"x": 1}, "tools": {"t": "1"}}
    cache.run("s", base["parents"], base["params"], _writer("a", calls), tools=base["tools"])
    new = {**base, **change}
    art = cache.run("s", new["parents"], new["params"], _writer("b", calls), tools=new["tools"])
    assert len(calls) == 2 and not art.cached


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_crash_leaves_nothing_half_written(tmp_path, exc):
    cache = Cache(tmp_path)

    def produce(tmp):
        (tmp / "half.bin").write_bytes(b"x" * 100)
        raise exc

    with pytest.raises(type(exc)):
        cache.run("s", [], {}, produce, tools={})
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    calls: list = []
    art = cache.run("s", [], {}, _writer("ok", calls), tools={})
    assert not art.cached and art.file.read_text() == "ok"


def test_manifest_for_missing_file_is_not_a_hit(tmp_path):
    cache, calls = Cache(tmp_path), []
    a = cache.run("s", [], {}, _writer("a", calls), tools={})
    a.file.unlink()
    b = cache.run("s", [], {}, _writer("a", calls), tools={})
    assert not b.cached and len(calls) == 2


def test_publish_folder_replaces_atomically(tmp_path):
    dest = tmp_path / "out"
    publish_folder(lambda t: (t / "a").write_text("1"), dest)
    with pytest.raises(ValueError):
        publish_folder(lambda t: ((t / "a").write_text("2"), (_ for _ in ()).throw(ValueError())), dest)
    assert (dest / "a").read_text() == "1"
    publish_folder(lambda t: (t / "b").write_text("3"), dest)
    assert sorted(p.name for p in dest.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]

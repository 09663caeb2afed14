"""The cache's checks of an entry on reuse, its manifest fields and its discard path, each against a value computed
here (hashlib / json over the bytes written) or a reason string from the module's contract, never read back from
enginesmith's own helpers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from enginesmith.pipeline.artifacts import Artifact, Cache, StageResult


def _writer(files: dict[str, bytes], metrics: dict | None = None, calls: list | None = None):
    def produce(tmp: Path) -> StageResult:
        if calls is not None:
            calls.append(tmp)
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        return StageResult(list(files), dict(metrics or {}))

    return produce


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_manifest_records_each_file_and_the_combined_hash_in_file_order(tmp_path):
    a = Cache(tmp_path).run("st", ["p"], {"k": 1}, _writer({"a.bin": b"abc", "b.bin": b"hello"}, {"m": 2}), tools={})
    m = json.loads((a.folder / "manifest.json").read_text())
    assert m["files"] == ["a.bin", "b.bin"]
    assert m["content"] == {"a.bin": {"size": 3, "sha256": _sha(b"abc")}, "b.bin": {"size": 5, "sha256": _sha(b"hello")}}
    combined = _sha(b"a.bin" + _sha(b"abc").encode() + b"b.bin" + _sha(b"hello").encode())
    assert m["sha256"] == combined == a.sha256
    body = {k: v for k, v in m.items() if k != "manifest_sha256"}
    assert m["manifest_sha256"] == _sha(json.dumps(body, sort_keys=True, default=str).encode())
    assert a.stage == "st" and a.file == a.folder / "a.bin" and a.metrics == {"m": 2} and a.cached is False
    assert isinstance(a.wall_time_s, float) and a.wall_time_s >= 0


def test_artifact_defaults_for_old_manifests(tmp_path):
    a = Artifact(tmp_path, {"stage": "x", "files": ["f"], "sha256": "s"})
    assert a.metrics == {} and a.wall_time_s == 0.0 and a.cached is False and a.stage == "x" and a.sha256 == "s"
    assert Artifact(tmp_path, {"wall_time_s": "1.5"}).wall_time_s == 1.5


def test_a_hit_is_cached_and_marks_its_last_use(tmp_path):
    import os

    cache = Cache(tmp_path)
    a = cache.run("st", [], {}, _writer({"a.bin": b"abc"}), tools={})
    os.utime(a.folder, (1_000_000, 1_000_000))
    hit = cache.lookup("st", a.manifest["key"])
    assert hit is not None and hit.cached is True and hit.folder == a.folder and hit.manifest == a.manifest
    assert a.folder.stat().st_mtime > 1_000_000


def test_lookup_of_an_absent_key_is_none_without_creating_anything(tmp_path):
    assert Cache(tmp_path).lookup("st", "0" * 64) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, edit, why", [
    ("no-manifest", lambda f, m: (f / "manifest.json").unlink(), "no manifest.json"),
    ("empty", lambda f, m: (f / "manifest.json").write_text(""), "manifest.json unreadable: Expecting value"),
    ("not-utf8", lambda f, m: (f / "manifest.json").write_bytes(b"\xff\xfe{"), "manifest.json unreadable: "),
    ("a-list", lambda f, m: (f / "manifest.json").write_text("[1]"), "manifest.json is for another key"),
    ("no-key", lambda f, m: (f / "manifest.json").write_text(json.dumps({k: v for k, v in m.items() if k != "key"})),
     "manifest.json is for another key"),
    ("files-a-string", lambda f, m: (f / "manifest.json").write_text(json.dumps({**m, "files": "a.bin"})),
     "manifest.json does not record its files' sizes and hashes"),
    ("content-a-list", lambda f, m: (f / "manifest.json").write_text(json.dumps({**m, "content": ["a.bin", "b.bin"]})),
     "manifest.json does not record its files' sizes and hashes"),
    ("content-missing-one", lambda f, m: (f / "manifest.json").write_text(
        json.dumps({**m, "content": {"a.bin": m["content"]["a.bin"]}})),
     "manifest.json does not record its files' sizes and hashes"),
    ("second-file-truncated", lambda f, m: (f / "b.bin").write_bytes(b"hell"), "b.bin is 4 bytes, 5 were written"),
    ("second-file-edited", lambda f, m: (f / "b.bin").write_bytes(b"HELLO"), "b.bin has other bytes than were written"),
    ("second-file-gone", lambda f, m: (f / "b.bin").unlink(), "b.bin is missing"),
    ("size-not-recorded", lambda f, m: (f / "manifest.json").write_text(
        json.dumps({**m, "content": {**m["content"], "a.bin": {"sha256": m["content"]["a.bin"]["sha256"]}}})),
     "a.bin is 3 bytes, None were written"),
    ("hash-not-recorded", lambda f, m: (f / "manifest.json").write_text(
        json.dumps({**m, "content": {**m["content"], "a.bin": {"size": 3}}})),
     "a.bin has other bytes than were written"),
    ("metrics-edited", lambda f, m: (f / "manifest.json").write_text(json.dumps({**m, "metrics": {"m": 9}})),
     "manifest.json was edited (its own sha256 does not match)"),
    ("own-hash-removed", lambda f, m: (f / "manifest.json").write_text(
        json.dumps({k: v for k, v in m.items() if k != "manifest_sha256"})),
     "manifest.json was edited (its own sha256 does not match)"),
    ("combined-hash-removed", lambda f, m: (f / "manifest.json").write_text(
        json.dumps({k: v for k, v in m.items() if k != "sha256"})),
     "manifest.json's sha256 does not match its files"),
])
def test_each_failed_check_is_one_warning_naming_the_folder_and_why(tmp_path, name, edit, why):
    events: list[tuple[str, str]] = []
    cache = Cache(tmp_path, on_event=lambda s, m: events.append((s, m)))
    a = cache.run("st", [], {}, _writer({"a.bin": b"abc", "b.bin": b"hello"}), tools={})
    m = json.loads((a.folder / "manifest.json").read_text())
    edit(a.folder, m)
    assert cache.lookup("st", a.manifest["key"]) is None
    assert not a.folder.exists()
    assert len(events) == 1 and events[0][0] == "st"
    prefix = f"cache entry {a.folder} failed its check ({why}"
    assert events[0][1].startswith(prefix), events[0][1]
    assert events[0][1].endswith("): discarded, rebuilding")
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == [".locks"]  # nothing set aside is left

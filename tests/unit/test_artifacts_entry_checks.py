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


# ---------------------------------------------------------------------------------------------------- reasons
# a message-less exception is named by its type (str(e) == ""); otherwise by the first line of its message
@pytest.mark.parametrize("error,reason", [(PermissionError(), "PermissionError"),
                                          (OSError("first line\nsecond line"), "first line")],
                         ids=["no-message", "multi-line-message"])
def test_an_unreadable_manifest_is_named_in_one_line(tmp_path, monkeypatch, error, reason):
    events: list[tuple[str, str]] = []
    cache = Cache(tmp_path, on_event=lambda s, m: events.append((s, m)))
    a = cache.run("st", [], {}, _writer({"a.bin": b"abc"}), tools={})
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == "manifest.json":
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert cache.lookup("st", a.manifest["key"], locked=True) is None
    assert [m for _, m in events] == [
        f"cache entry {a.folder} failed its check (manifest.json unreadable: {reason}): discarded, rebuilding"]


def test_no_manifest_reason_in_full(tmp_path):
    events: list[tuple[str, str]] = []
    cache = Cache(tmp_path, on_event=lambda s, m: events.append((s, m)))
    a = cache.run("st", [], {}, _writer({"a.bin": b"abc"}), tools={})
    (a.folder / "manifest.json").unlink()
    assert cache.lookup("st", a.manifest["key"]) is None
    assert events == [("st", f"cache entry {a.folder} failed its check (no manifest.json): discarded, rebuilding")]


# ---------------------------------------------------------------------------------------------------- discard
def test_discard_of_a_folder_already_gone_is_quiet(tmp_path):
    Cache(tmp_path)._discard(tmp_path / "st" / "gone")  # another process removed it first
    assert list(tmp_path.iterdir()) == []


def test_a_discarded_entry_that_cannot_be_fully_removed_is_left_under_a_trash_temp_name(tmp_path, monkeypatch):
    import os

    events: list[tuple[str, str]] = []
    cache = Cache(tmp_path, on_event=lambda s, m: events.append((s, m)))
    a = cache.run("st", [], {}, _writer({"a.bin": b"abc"}), tools={})
    (a.folder / "a.bin").write_bytes(b"xyz")
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if str(path).endswith("a.bin"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    assert cache.lookup("st", a.manifest["key"]) is None  # a removal error is not the caller's problem
    monkeypatch.undo()
    left = [p.name for p in (tmp_path / "st").iterdir() if p.name != ".locks"]
    assert len(left) == 1 and left[0].startswith(f".trash-{os.getpid()}-"), left  # files.temp_name("trash")
    assert len(events) == 1


# ---------------------------------------------------------------------------------------------------- producing
def test_run_creates_a_missing_cache_root(tmp_path):
    a = Cache(tmp_path / "new" / "cache").run("st", [], {}, _writer({"a.bin": b"abc"}), tools={})
    assert a.file.read_bytes() == b"abc" and a.folder.parent == tmp_path / "new" / "cache" / "st"


def test_the_temp_folder_is_a_hidden_sibling_named_for_the_key_and_the_builder(tmp_path):
    import os

    seen: list[Path] = []
    a = Cache(tmp_path).run("st", ["p"], {"x": 1}, _writer({"a.bin": b"abc"}, calls=seen), tools={"t": "1"})
    key = a.manifest["key"]
    (tmp,) = seen
    assert tmp.parent == tmp_path / "st"
    assert tmp.name.startswith(f".tmp-{key[:12]}-{os.getpid()}-") and len(tmp.name) == len(f".tmp-{key[:12]}-{os.getpid()}-") + 8
    assert not tmp.exists()


def test_the_manifest_key_is_sha256_of_stage_parents_params_tools(tmp_path):
    a = Cache(tmp_path).run("st", ["p1", "p2"], {"x": 1}, _writer({"a.bin": b"abc"}), tools={"t": "1"})
    want = _sha(json.dumps({"stage": "st", "parents": ["p1", "p2"], "params": {"x": 1}, "tools": {"t": "1"}},
                           sort_keys=True).encode())
    assert a.manifest["key"] == want and a.folder == tmp_path / "st" / want[:24]
    b = Cache(tmp_path).run("u", [a], {}, _writer({"b.bin": b"b"}), tools={})
    assert b.manifest["parents"] == [a.sha256]


def test_run_without_tools_records_the_installed_tool_versions(tmp_path):
    import platform

    a = Cache(tmp_path).run("st", [], {}, _writer({"a.bin": b"abc"}))
    assert a.manifest["tools"]["python"] == platform.python_version()
    assert a.manifest["tools"]["enginesmith"].count("+src.") == 1


def test_wall_time_is_rounded_to_milliseconds(tmp_path, monkeypatch):
    import time

    real = time.perf_counter
    ticks = iter([100.0, 100.1234567])
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks, None) or real())
    a = Cache(tmp_path).run("st", [], {}, _writer({"a.bin": b"abc"}), tools={})
    monkeypatch.undo()
    assert a.manifest["wall_time_s"] == 0.123 and a.wall_time_s == 0.123


def test_the_manifest_file_is_indented_sorted_json_with_a_final_newline(tmp_path):
    a = Cache(tmp_path).run("st", [], {"b": 1, "a": [1, 2]}, _writer({"a.bin": b"abc"}, {"z": 1, "y": 2}), tools={})
    text = (a.folder / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_non_json_params_are_written_as_their_string(tmp_path):
    a = Cache(tmp_path).run("st", [], {"p": Path("/x/y")}, _writer({"a.bin": b"abc"}, {"m": Path("/m")}), tools={})
    assert a.manifest["params"] == {"p": "/x/y"} and a.manifest["metrics"] == {"m": "/m"}
    again = Cache(tmp_path).run("st", [], {"p": Path("/x/y")}, _writer({"a.bin": b"zzz"}), tools={})
    assert again.cached and again.manifest == a.manifest


def test_a_build_error_removes_the_temp_folder_even_if_a_file_there_cannot_be_removed(tmp_path, monkeypatch):
    import os

    real_unlink = os.unlink

    def produce(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        monkeypatch.setattr(os, "unlink", lambda p, *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied"))
                            if str(p).endswith("half.bin") else real_unlink(p, *a, **k))
        raise RuntimeError("tool failed")

    with pytest.raises(RuntimeError, match="tool failed"):  # the tool's error, not the cleanup's
        Cache(tmp_path).run("st", [], {}, produce, tools={})


def test_the_removed_input_error_says_what_to_do(tmp_path):
    import shutil

    from enginesmith.errors import EnginesmithError

    cache = Cache(tmp_path)
    parent = cache.run("p", [], {}, _writer({"p.bin": b"p"}), tools={})

    def produce(tmp):
        shutil.rmtree(parent.folder)
        raise FileNotFoundError(parent.file)

    with pytest.raises(EnginesmithError) as e:
        cache.run("st", [parent], {}, produce, tools={})
    assert str(e.value) == (f"the st stage's input {parent.folder} was removed from the cache during the build "
                            "(by `enginesmith cache clean` or by hand); run the build again")
    assert isinstance(e.value.__cause__, FileNotFoundError)


# ---------------------------------------------------------------------------------------------------- hooks, rebuild
def test_on_start_is_told_of_builds_only(tmp_path):
    started: list[str] = []
    cache = Cache(tmp_path, on_start=started.append)
    cache.run("st", [], {}, _writer({"a.bin": b"abc"}), tools={})
    cache.run("st", [], {}, _writer({"a.bin": b"abc"}), tools={})
    cache.run("u", [], {}, _writer({"a.bin": b"abc"}), tools={})
    assert started == ["st", "u"]


def test_rebuild_accepts_any_iterable_of_stage_names(tmp_path):
    calls: list = []
    for x in (1, 2):
        Cache(tmp_path).run("st", [], {"x": x}, _writer({"a.bin": b"old"}), tools={})
    cache = Cache(tmp_path, rebuild=(s for s in ["st"]))  # a generator: read once
    for x in (1, 2):
        a = cache.run("st", [], {"x": x}, _writer({"a.bin": b"new"}, calls=calls), tools={})
        assert a.cached is False and a.file.read_bytes() == b"new"
    assert len(calls) == 2


def test_rebuild_false_reuses(tmp_path):
    calls: list = []
    Cache(tmp_path).run("st", [], {}, _writer({"a.bin": b"old"}), tools={})
    a = Cache(tmp_path, rebuild=False).run("st", [], {}, _writer({"a.bin": b"new"}, calls=calls), tools={})
    assert a.cached and calls == []


# ---------------------------------------------------------------------------------------------------- locking
def test_a_hit_is_served_without_waiting_for_the_keys_lock(tmp_path):
    import threading

    from enginesmith.files import file_lock

    cache = Cache(tmp_path)
    a = cache.run("st", [], {}, _writer({"a.bin": b"abc"}), tools={})
    out: list = []
    with file_lock(cache._lock_path("st", a.manifest["key"])):  # another build of the key holds it
        t = threading.Thread(target=lambda: out.append(cache.run("st", [], {}, _writer({"a.bin": b"x"}), tools={})))
        t.start()
        t.join(5)
        done = not t.is_alive()
    t.join()
    assert done and out[0].cached


def test_a_build_waiting_for_the_lock_says_so_once_then_reuses_what_the_holder_built(tmp_path):
    import threading
    import time

    from enginesmith.files import file_lock

    events: list[tuple[str, str]] = []
    calls: list = []
    cache = Cache(tmp_path, on_event=lambda s, m: events.append((s, m)))
    key = cache.key("st", [], {}, {})
    out: list = []
    with file_lock(cache._lock_path("st", key)):
        t = threading.Thread(target=lambda: out.append(cache.run("st", [], {}, _writer({"a.bin": b"w"}, calls=calls),
                                                                 tools={})))
        t.start()
        for _ in range(200):
            if events:
                break
            time.sleep(0.01)
        # the holder publishes the entry, then lets go
        Cache(tmp_path)._produce("st", key, [], [], {}, {}, _writer({"a.bin": b"holder"}))
    t.join(5)
    assert events == [("st", "waiting for another build of the same stage (same inputs) to finish")]
    assert out[0].cached and out[0].file.read_bytes() == b"holder" and calls == []


def test_a_lookup_rechecks_under_the_lock_and_serves_an_entry_repaired_meanwhile(tmp_path):
    import threading
    import time

    from enginesmith.files import file_lock

    events: list = []
    cache = Cache(tmp_path, on_event=lambda s, m: events.append(m))
    a = cache.run("st", [], {}, _writer({"a.bin": b"abc"}), tools={})
    key = a.manifest["key"]
    (a.folder / "a.bin").write_bytes(b"xyz")
    out: list = []
    with file_lock(cache._lock_path("st", key)):
        t = threading.Thread(target=lambda: out.append(cache.lookup("st", key)))
        t.start()
        time.sleep(0.2)
        assert t.is_alive(), "a failed entry is discarded only under the key's lock"
        (a.folder / "a.bin").write_bytes(b"abc")  # the holder rebuilt it meanwhile
    t.join(5)
    (hit,) = out
    assert hit is not None and hit.cached is True and hit.folder == a.folder and hit.manifest == a.manifest
    assert events == []


def test_a_hit_on_a_cache_whose_times_cannot_be_set_is_still_served(tmp_path, monkeypatch):
    import os

    cache = Cache(tmp_path)
    a = cache.run("st", [], {}, _writer({"a.bin": b"abc"}), tools={})

    def utime(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "utime", utime)
    hit = cache.lookup("st", a.manifest["key"])
    assert hit is not None and hit.cached


def test_a_build_that_waited_and_finds_a_broken_entry_rebuilds_it_under_the_lock_it_holds(tmp_path):
    import threading
    import time

    from enginesmith.files import file_lock

    events: list[str] = []
    calls: list = []
    cache = Cache(tmp_path, on_event=lambda s, m: events.append(m))
    key = cache.key("st", [], {}, {})
    out: list = []
    with file_lock(cache._lock_path("st", key)):
        t = threading.Thread(target=lambda: out.append(cache.run("st", [], {}, _writer({"a.bin": b"mine"}, calls=calls),
                                                                 tools={})), daemon=True)
        t.start()
        for _ in range(200):
            if events:
                break
            time.sleep(0.01)
        held = Cache(tmp_path)._produce("st", key, [], [], {}, {}, _writer({"a.bin": b"holder"}))
        (held.folder / "a.bin").write_bytes(b"broken")  # the holder left a broken entry
    t.join(10)
    assert not t.is_alive(), "the waiting build must not take its own lock a second time"
    assert out[0].cached is False and out[0].file.read_bytes() == b"mine" and len(calls) == 1
    assert events[0] == "waiting for another build of the same stage (same inputs) to finish"
    assert len(events) == 2 and events[1].startswith(f"cache entry {held.folder} failed its check (a.bin has other")

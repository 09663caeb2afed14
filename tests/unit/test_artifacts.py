"""Content-addressed, atomic stage artifacts."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from enginesmith.files import publish_folder
from enginesmith.pipeline.artifacts import Cache, StageResult


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
    assert [p for p in tmp_path.rglob("*") if p.is_file() and ".locks" not in p.parts] == []
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


@pytest.mark.parametrize("tamper", ["truncate", "same-size-edit", "delete", "manifest-garbage", "manifest-other-key"])
def test_a_tampered_entry_is_discarded_with_a_warning_and_rebuilt(tmp_path, tamper):
    events: list = []
    cache, calls = Cache(tmp_path, on_event=lambda s, m: events.append((s, m))), []
    a = cache.run("s", [], {}, _writer("hello world", calls), tools={})
    if tamper == "truncate":
        a.file.write_bytes(b"hello")
    elif tamper == "same-size-edit":
        a.file.write_bytes(b"HELLO world")
    elif tamper == "delete":
        a.file.unlink()
    elif tamper == "manifest-garbage":
        (a.folder / "manifest.json").write_text("{not json")
    else:
        m = json.loads((a.folder / "manifest.json").read_text())
        (a.folder / "manifest.json").write_text(json.dumps({**m, "key": "0" * 64}))
    b = Cache(tmp_path, on_event=lambda s, m: events.append((s, m))).run("s", [], {}, _writer("hello world", calls), tools={})
    assert not b.cached and len(calls) == 2 and b.file.read_text() == "hello world"
    assert len(events) == 1 and "discarded" in events[0][1]
    c = Cache(tmp_path).run("s", [], {}, _writer("other", calls), tools={})
    assert c.cached and c.file.read_text() == "hello world" and len(calls) == 2


def test_rebuild_replaces_a_valid_entry_once(tmp_path):
    calls: list = []
    Cache(tmp_path).run("s", [], {}, _writer("a", calls), tools={})
    cache = Cache(tmp_path, rebuild=("s",))
    b = cache.run("s", [], {}, _writer("b", calls), tools={})
    c = cache.run("s", [], {}, _writer("c", calls), tools={})
    assert not b.cached and c.cached and c.file.read_text() == "b" and len(calls) == 2
    assert Cache(tmp_path, rebuild=("other",)).run("s", [], {}, _writer("d", calls), tools={}).cached


def _slow_build(root: str, text: str, started: str) -> str:
    import time as _time
    from pathlib import Path as _Path

    def produce(tmp):
        _Path(started).touch()
        _time.sleep(1.0)
        (tmp / "out.txt").write_text(text)
        return StageResult(["out.txt"])

    a = Cache(_Path(root), on_event=lambda s, m: None).run("s", [], {}, produce, tools={})
    return f"{a.cached}:{a.file.read_text()}"


def test_concurrent_builds_of_one_key_do_the_work_once(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    starts = [tmp_path / f"started{i}" for i in range(3)]
    with ProcessPoolExecutor(3) as pool:
        results = list(pool.map(_slow_build, [str(tmp_path / "c")] * 3, ["x", "y", "z"], [str(s) for s in starts]))
    assert sum(s.exists() for s in starts) == 1, "exactly one process built the entry"
    built = [r for r in results if r.startswith("False:")]
    assert len(built) == 1 and all(r == f"True:{built[0][6:]}" for r in results if r not in built)


def test_a_killed_builders_temp_folder_is_removed_by_the_next_build(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / "s" / f".tmp-0123456789ab-{pid}-deadbeef"
    stale.mkdir(parents=True)
    (stale / "half.bin").write_bytes(b"x")
    mine = tmp_path / "s" / f".tmp-0123456789ab-{os.getpid()}-cafebabe"  # a live owner: kept
    mine.mkdir()
    Cache(tmp_path).run("s", [], {"x": 1}, _writer("ok", []), tools={})
    assert not stale.exists() and mine.exists()


@pytest.mark.parametrize("tamper, reason", [
    ("truncate", "out.txt is 5 bytes, 11 were written"),
    ("same-size-edit", "out.txt has other bytes than were written"),
    ("delete", "out.txt is missing"),
    ("manifest-garbage", "manifest.json unreadable: Expecting property name enclosed in double quotes"),
    ("manifest-other-key", "manifest.json is for another key"),
    ("no-content", "manifest.json does not record its files' sizes and hashes"),
    ("content-other-files", "manifest.json does not record its files' sizes and hashes"),
    ("no-files", "manifest.json does not record its files' sizes and hashes"),
    ("sha256-edited", "manifest.json's sha256 does not match its files"),
])
def test_the_warning_says_why_an_entry_was_discarded(tmp_path, capsys, tamper, reason):
    a = Cache(tmp_path).run("s", [], {}, _writer("hello world", []), tools={})
    m = json.loads((a.folder / "manifest.json").read_text())
    edits = {"no-content": {"content": None}, "content-other-files": {"content": {"x.txt": m["content"]["out.txt"]}},
             "no-files": {"files": [], "content": {}}, "sha256-edited": {"sha256": "0" * 64},
             "manifest-other-key": {"key": "0" * 64}}
    if tamper == "truncate":
        a.file.write_bytes(b"hello")
    elif tamper == "same-size-edit":
        a.file.write_bytes(b"HELLO world")
    elif tamper == "delete":
        a.file.unlink()
    elif tamper == "manifest-garbage":
        (a.folder / "manifest.json").write_text("{not json")
    else:
        (a.folder / "manifest.json").write_text(json.dumps({**m, **edits[tamper]}))
    b = Cache(tmp_path).run("s", [], {}, _writer("hello world", []), tools={})  # the default on_event: stderr
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: s: cache entry {a.folder} failed its check ({reason}")
    assert err.rstrip().endswith("): discarded, rebuilding")
    assert b.cached is False and b.file.read_text() == "hello world"
    assert [p.name for p in (tmp_path / "s").iterdir() if p.name != ".locks"] == [a.folder.name]  # no trash left


def test_no_cache_rebuilds_every_stage_once_and_the_manifest_says_what_was_made(tmp_path):
    import time as _time

    calls: list = []
    first = Cache(tmp_path).run("s", [], {"x": 1}, _writer("a", calls), tools={"t": "1"})
    cache = Cache(tmp_path, rebuild=True)
    t0 = _time.time()
    b = cache.run("s", [], {"x": 1}, _writer("b", calls), tools={"t": "1"})
    c = cache.run("u", [b], {}, _writer("c", calls), tools={})
    again = cache.run("s", [], {"x": 1}, _writer("d", calls), tools={"t": "1"})
    assert len(calls) == 3 and b.cached is False and c.cached is False and again.cached is True
    assert b.folder == first.folder and b.file.read_text() == "b"
    m = json.loads((b.folder / "manifest.json").read_text())
    assert m["stage"] == "s" and m["metrics"] == {"n": 1} and m["content"] == {
        "out.txt": {"size": 1, "sha256": hashlib.sha256(b"b").hexdigest()}}
    assert 0 <= m["wall_time_s"] < _time.time() - t0 + 0.01
    created = _time.mktime(_time.strptime(m["created"], "%Y-%m-%dT%H:%M:%S%z"))
    assert abs(created - t0) < 5
    assert Cache(tmp_path).lookup("s", m["key"]).manifest == m  # what was written is what a reuse reads


def test_a_parent_removed_during_the_build_is_one_clear_error(tmp_path):
    import shutil

    from enginesmith.errors import EnginesmithError

    cache = Cache(tmp_path)
    parent = cache.run("p", [], {}, _writer("p", []), tools={})
    other = cache.run("q", [], {}, _writer("q", []), tools={})

    def produce(tmp):
        shutil.rmtree(parent.folder)  # `enginesmith cache clean` from another shell, mid-build
        raise FileNotFoundError(parent.file)

    with pytest.raises(EnginesmithError, match=f"the s stage's input {parent.folder} was removed from the cache"):
        cache.run("s", [other, parent], {}, produce, tools={})

    def fails(tmp):
        raise FileNotFoundError("elsewhere")

    with pytest.raises(FileNotFoundError):  # parents intact: the error is not blamed on the cache
        cache.run("s", [other], {}, fails, tools={})
    with pytest.raises(EnginesmithError, match="^own message$"):  # an EnginesmithError keeps its own words
        cache.run("s", [other], {}, lambda tmp: (_ for _ in ()).throw(EnginesmithError("own message")), tools={})


def test_locks_are_per_key_and_a_lookup_takes_the_lock_only_to_discard(tmp_path):
    from enginesmith.files import file_lock

    cache = Cache(tmp_path)
    a = cache.run("s", [], {"x": 1}, _writer("a", []), tools={})
    key = a.manifest["key"]
    assert cache._lock_path("s", key) == tmp_path / "s" / ".locks" / f"{key[:24]}.lock"
    with file_lock(cache._lock_path("s", key)):  # another process building it: a valid entry is still served
        assert cache.lookup("s", key).cached
    a.file.write_bytes(b"zz")
    with file_lock(cache._lock_path("s", key)):
        assert cache.lookup("s", key, locked=True) is None  # the caller holds the lock: no self-deadlock


def test_publish_cleans_only_its_own_stale_temps_in_the_users_folder(tmp_path):
    import subprocess
    import sys

    pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                             text=True).stdout)  # a process that has exited
    ours = tmp_path / f".out.tmp-{pid}-deadbeef"
    ours.mkdir()
    theirs = tmp_path / f".notes.old-{pid}-cafebabe"  # a user's file that only looks like a temp name
    theirs.write_text("keep me")
    orphan = tmp_path / f".out.old-{pid}-0badf00d"  # killed between the two renames: the old engine, aside
    orphan.mkdir()
    (orphan / "a").write_text("old engine")
    dest = tmp_path / "out"
    assert not dest.exists()
    publish_folder(lambda t: (t / "a").write_text("new"), tmp_path / "other")  # another destination: ours untouched
    assert ours.exists() and orphan.exists() and theirs.read_text() == "keep me"
    publish_folder(lambda t: (t / "a").write_text("new"), dest)
    assert not ours.exists() and not orphan.exists() and theirs.read_text() == "keep me"
    assert (dest / "a").read_text() == "new"

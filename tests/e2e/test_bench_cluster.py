"""`enginesmith bench --cluster`: a small suite run in-process (run_bench), as local child-process jobs and as Ray
tasks gives the same rows, timings aside; on a simulated two-node Ray cluster each row runs on a node of its
device kind, a row no node can serve fails at once in one line, and an engine folder built on another node comes
back whole. Real builds (lenet5), a real Ray."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from enginesmith.benchmarks.bench import run_bench
from enginesmith.benchmarks.cluster_bench import pack_folder, run_on_cluster, unpack_folder
from enginesmith.benchmarks.suite import load_suite
from enginesmith.benchmarks.timing import TimingProfile
from enginesmith.cluster.devices import MEASURE_SLOT, resource_name
from enginesmith.errors import EnginesmithError

ray = pytest.importorskip("ray", reason="the cluster extra (Ray) is part of the dev install")

# what does not depend on timing: the same build and the same images give the same values
STABLE = ("method", "model", "input_size", "target", "precision", "batch", "status", "top1", "accuracy_images",
          "boxes", "candidates", "macs", "engine_mb", "verify_cosine", "weights", "dataset", "error")
SUITE = """
[suite]
name = "tiny"
targets = ["torch", "onnxruntime", "openvino"]
precisions = ["fp32", "int8"]
batches = [1]
[[model]]
model = "lenet5"
"""


def _suite(tmp_path: Path, text: str = SUITE) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(text)
    return p


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in STABLE} for r in rows]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cluster-cache")


def _differences(got: list[dict], want: list[dict]) -> list[tuple]:
    """(row index, column, got, want) for every stable column that differs."""
    return [(i, k, g[k], w[k]) for i, (g, w) in enumerate(zip(got, want)) for k in STABLE if g[k] != w[k]]


def _check_probes(out) -> None:
    """Each row's % of probe divides by the probe measured on its own node, for its target and precision."""
    probes = out.run["roofline"]["probes"]
    assert {(p["node"], p["target"], p["precision"]) for p in probes.values()} == \
        {(r["node"], r["target"], r["precision"]) for r in out.rows}
    for r in out.rows:
        (p,) = [p for p in probes.values() if (p["node"], p["target"], p["precision"]) == (r["node"], r["target"], r["precision"])]
        assert r["probe_gmacs"] == p["gmacs_per_s"] > 0 and r["fraction_of_probe"] == r["gmacs_per_s"] / p["gmacs_per_s"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory, cache):
    """The suite run in process (bench.run_bench): the rows the cluster runs must equal."""
    tmp = tmp_path_factory.mktemp("plain")
    suite = load_suite(_suite(tmp))
    out = run_bench(suite, tmp / "res", profile=TimingProfile.quick(), quick=True, cache_dir=cache,
                    engines=tmp / "engines", progress=False)
    assert [r["status"] for r in out.rows] == ["ok"] * 5, [r["error"] for r in out.rows]
    return {"suite": suite, "rows": out.rows, "engines": tmp / "engines"}


def test_local_jobs_give_the_in_process_rows(tmp_path, cache, plain):
    local = run_on_cluster(plain["suite"], tmp_path / "local", "local", profile=TimingProfile.quick(), quick=True,
                           cache_dir=cache, engines=plain["engines"], progress=False)
    assert _differences(_stable(local.rows), _stable(plain["rows"])) == []
    assert {r["node"] for r in local.rows} == {os.uname().nodename}
    _check_probes(local)
    written = json.loads((tmp_path / "local" / "results.json").read_text())
    assert written["run"]["cluster"] == "local" and [r["target"] for r in written["rows"]] == [r["target"] for r in plain["rows"]]


@pytest.mark.slow  # ~1.5 min: a Ray started for the run
def test_ray_tasks_give_the_in_process_rows(tmp_path, cache, plain):
    on_ray = run_on_cluster(plain["suite"], tmp_path / "ray", "ray", profile=TimingProfile.quick(), quick=True,
                            cache_dir=cache, engines=plain["engines"], progress=False)
    assert _differences(_stable(on_ray.rows), _stable(plain["rows"])) == []
    assert all(r["node"].startswith(os.uname().nodename + " (") and r["machine"] for r in on_ray.rows)
    _check_probes(on_ray)
    written = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert written["run"]["cluster"] == "ray"


@pytest.fixture(scope="module")
def two_nodes():
    """A head (cpu, cpu:avx2, a measuring slot) and node B (cpu, cpu:amx, a measuring slot), this machine both."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {resource_name("cpu"): 1.0, resource_name("cpu:avx2"): 1.0, MEASURE_SLOT: 1.0}})
    cluster.add_node(num_cpus=1, resources={resource_name("cpu"): 1.0, resource_name("cpu:amx"): 1.0, MEASURE_SLOT: 1.0})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    b = next(i for i, r in nodes.items() if resource_name("cpu:amx") in r)
    head = next(i for i in nodes if i != b)
    yield {"address": cluster.address, "b": b, "head": head}
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow  # ~1 min: a two-node Ray cluster and five builds
def test_rows_run_on_nodes_of_their_device_kind(tmp_path, cache, two_nodes):
    text = SUITE.replace('batches = [1]', 'batches = [1]\ndevice = {openvino = "cpu:amx", onnxruntime = "cpu:avx2"}')
    out = run_on_cluster(load_suite(_suite(tmp_path, text)), tmp_path / "res", two_nodes["address"],
                         profile=TimingProfile.quick(), quick=True, cache_dir=cache, engines=tmp_path / "engines",
                         progress=False)
    by = {(r["target"], r["precision"]): r for r in out.rows}
    assert all(r["status"] == "ok" for r in out.rows), [r["error"] for r in out.rows]
    for precision in ("fp32", "int8"):
        assert two_nodes["b"][:12] in by[("openvino", precision)]["node"]
        assert two_nodes["head"][:12] in by[("onnxruntime", precision)]["node"]
    # the engine built on node B came back whole to the caller's --engines folder
    for r in out.rows:
        if r["engine_dir"]:
            assert (Path(r["engine_dir"]) / "manifest.json").is_file()
    leftovers = [p.name for p in (tmp_path / "engines").rglob(".*")]
    assert leftovers == [], f"temporary folders left in --engines: {leftovers}"


def test_a_row_no_node_can_run_fails_at_once_in_one_line(tmp_path, cache):
    text = SUITE.replace('batches = [1]', 'batches = [1]\ndevice = {openvino = "gpu:H100"}')
    with pytest.raises(EnginesmithError) as e:
        run_on_cluster(load_suite(_suite(tmp_path, text)), tmp_path / "res", "local", profile=TimingProfile.quick(),
                       quick=True, cache_dir=cache, engines=tmp_path / "engines", progress=False)
    assert str(e.value).startswith("lenet5@32x32/openvino/fp32/b1 needs device gpu:H100; this machine is cpu")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "res").exists() and not (tmp_path / "engines").exists(), "something ran before the check"


def test_engine_folders_travel_whole_and_hostile_archives_are_refused(tmp_path):
    import io
    import tarfile

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "model.onnx").write_bytes(os.urandom(1000))
    (src / "sub" / "x.bin").write_bytes(b"abc")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "stale.txt").write_text("old engine's file")
    unpack_folder(pack_folder(src), dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["model.onnx", "sub", "sub/x.bin"]
    assert (dest / "model.onnx").read_bytes() == (src / "model.onnx").read_bytes()
    for name in ("../escape.txt", "/etc/evil"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
        with pytest.raises(EnginesmithError, match="not a plain file inside it"):
            unpack_folder(buf.getvalue(), tmp_path / "victim")
        assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "victim").exists()
    shutil.rmtree(dest)

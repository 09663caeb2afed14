"""The report's stage table and the manifest list every stage a build ran or reused, with its time: a real ONNX
Runtime INT8 build of LeNet-5 (statistics, quantize-qdq and latency are not in the engine's lineage), built, then
reused from the cache. The latency line carries its spread, pair count and load average."""

from __future__ import annotations

import json
import re

from enginesmith.pipeline.run import BuildConfig, build_engine


def _table(report: str) -> list[dict[str, str]]:
    """The rows of report.md's stage table (the first table), as {column: cell}."""
    lines = [ln for ln in report.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[1:]:  # (the |---| rule is not a "| " line)
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) != len(header) or cells[0] == "runner":
            break  # the next table (the latency check)
        rows.append(dict(zip(header, cells)))
    return rows


def test_every_stage_that_ran_is_in_the_table_and_the_manifest(tmp_path):
    cfg = dict(target="onnxruntime", precision="int8", calib_size=8, cache_dir=tmp_path / "cache",
               latency_budget_s=0.3)
    seen: list[str] = []
    first = build_engine(BuildConfig("lenet5", out=tmp_path / "a", **cfg), on_stage=lambda a: seen.append(a.stage))
    assert seen == ["export", "simplify", "statistics", "quantize-qdq", "engine", "latency"]  # what the build ran
    assert [a.stage for a in first.stages] == ["export", "simplify", "quantize-qdq", "engine"]  # the lineage only
    report = (tmp_path / "a" / "report.md").read_text()
    rows = _table(report)
    assert [r["stage"] for r in rows] == seen
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert [s["stage"] for s in manifest["stages"]] == seen
    by_stage = {a.stage: a for a in first.ran}
    for row, entry in zip(rows, manifest["stages"]):
        assert row["status"] == "built" and entry["cached"] is False
        assert row["time"] == f"{by_stage[row['stage']].wall_time_s:.1f} s" == f"{entry['wall_time_s']:.1f} s"
    assert by_stage["statistics"].wall_time_s > 0
    speed = re.search(r"speed-up over PyTorch eager: \*\*[0-9.]+x\*\* \(median latency ratio; per-pair ratio "
                      r"p10-p90 ([0-9.]+)-([0-9.]+)x over (\d+) interleaved pairs in [0-9.]+ s; load average "
                      r"([0-9.]+) before, ([0-9.]+) after, \d+ CPUs\)", report)
    assert speed, report
    lat = manifest["latency"]
    assert int(speed.group(3)) == lat["pairs"] >= 15 and lat["engine"]["iterations"] == lat["pairs"]
    assert float(speed.group(1)) <= lat["speedup_p50_of_pairs"] <= float(speed.group(2))

    second = build_engine(BuildConfig("lenet5", out=tmp_path / "b", **cfg))
    rows2 = _table((tmp_path / "b" / "report.md").read_text())
    assert [r["stage"] for r in rows2] == seen and {r["status"] for r in rows2} == {"cached"}
    assert [r["time"] for r in rows2] == [r["time"] for r in rows]  # a reused stage shows the time it took
    assert all(s["cached"] for s in json.loads((tmp_path / "b" / "manifest.json").read_text())["stages"])
    assert all(a.cached for a in second.ran)

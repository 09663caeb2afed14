"""An engine built without --weights says it is untrained, everywhere a user meets it (issue 17): the manifest's
"trained", `runtime.load` (an UntrainedEngineWarning and `.trained`), and one `warning:` line on stderr from
`enginesmith detect`, `classify` and `eval`. An engine built from a real checkpoint (LeNet-5 trained here on the
digits, ~3 s) says nothing, and its measured top-1 shows the difference is real."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from enginesmith.data.offline_photos import base_photos
from enginesmith.pipeline.run import BuildConfig, build_engine
from enginesmith.runtime import load
from enginesmith.runtime.trained import UntrainedEngineWarning


@pytest.fixture(scope="module")
def engines(tmp_path_factory, cache_dir):
    """{"seeded": lenet5, "trained": lenet5 --weights, "yolo": seeded yolov3-tiny 64x64}, ONNX Runtime FP32."""
    torch = pytest.importorskip("torch")
    from enginesmith.data.digits import load_digits_32
    from enginesmith.training.digits import train_lenet5

    root = tmp_path_factory.mktemp("untrained")
    model, top1 = train_lenet5(load_digits_32(), epochs=5)
    assert top1 > 0.8  # the checkpoint is really trained
    weights = root / "lenet5.pt"
    torch.save(model.state_dict(), weights)
    common = dict(target="onnxruntime", precision="fp32", cache_dir=cache_dir, latency_budget_s=0.2, calib_size=4)
    out = {"seeded": root / "seeded", "trained": root / "trained", "yolo": root / "yolo"}
    build_engine(BuildConfig(model="lenet5", out=out["seeded"], **common))
    build_engine(BuildConfig(model="lenet5", weights=weights, out=out["trained"], **common))
    build_engine(BuildConfig(model="yolov3-tiny", input_size=(64, 64), out=out["yolo"], **common))
    yield out
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def photo(tmp_path) -> Path:
    p = tmp_path / "photo.png"
    Image.fromarray(base_photos()[0]).save(p)
    return p


def _warning_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "untrained" in ln]


def test_manifest_records_whether_weights_were_given(engines):
    trained = {k: json.loads((v / "manifest.json").read_text())["trained"] for k, v in engines.items()}
    assert trained == {"seeded": False, "trained": True, "yolo": False}


def test_load_warns_for_an_untrained_engine_only(engines, photo):
    with pytest.warns(UntrainedEngineWarning, match=r"without --weights \(seeded, untrained\)") as caught:
        det = load(engines["yolo"])
    assert str(engines["yolo"]) in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller's line, not into enginesmith
    with det:
        assert det.trained is False
        det(photo)  # still usable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        with load(engines["trained"]) as clf:
            assert clf.trained is True
    with pytest.warns(UntrainedEngineWarning), load(engines["seeded"]) as clf:
        assert clf.trained is False


def test_engine_from_before_the_record_is_unknown_and_silent(engines, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(engines["seeded"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["trained"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with load(old) as clf:
            assert clf.trained is None


def test_detect_and_classify_print_one_warning_line(engines, photo, run_cli, tmp_path):
    proc = run_cli("detect", str(engines["yolo"]), str(photo), "--out", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    lines = _warning_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("warning: engine ") and "--weights" in lines[0], proc.stderr
    assert "UntrainedEngineWarning" not in proc.stderr and "Traceback" not in proc.stderr
    assert "untrained" not in proc.stdout  # results on stdout stay parseable

    digit = tmp_path / "digit.png"
    from enginesmith.data.digits import load_digits_32

    Image.fromarray(load_digits_32().test_images[0]).save(digit)
    proc = run_cli("classify", str(engines["seeded"]), str(digit), "--out", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    assert len(_warning_lines(proc.stderr)) == 1 and "its classes are random" in proc.stderr
    proc = run_cli("classify", str(engines["trained"]), str(digit), "--out", str(tmp_path / "c2"))
    assert proc.returncode == 0, proc.stderr
    assert _warning_lines(proc.stderr) == [] and "warning" not in proc.stderr


def test_eval_warns_for_untrained_and_measures_trained(engines, run_cli, tmp_path):
    def run(engine: Path) -> tuple[float, list[str]]:
        js = tmp_path / f"{engine.name}.json"
        proc = run_cli("eval", str(engine), "--dataset", "digits", "--limit", "200", "--json", str(js))
        assert proc.returncode == 0, proc.stderr
        assert "warning" not in proc.stdout  # the metrics on stdout; warnings on stderr
        metrics = json.loads(js.read_text())
        assert metrics["trained"] is (engine.name == "trained")
        return metrics["top1"], _warning_lines(proc.stderr)

    top1, lines = run(engines["seeded"])
    assert len(lines) == 1 and lines[0].startswith("warning: engine ") and "accuracy is meaningless" in lines[0]
    assert top1 < 0.5  # ten classes, random weights
    top1, lines = run(engines["trained"])
    assert lines == [] and top1 > 0.8


def test_eval_of_a_model_name_without_weights_warns(run_cli, tmp_path):
    proc = run_cli("eval", "lenet5", "--dataset", "digits", "--limit", "16")
    assert proc.returncode == 0, proc.stderr
    lines = _warning_lines(proc.stderr)
    assert len(lines) == 1 and "model lenet5 without --weights" in lines[0], proc.stderr

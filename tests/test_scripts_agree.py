"""The entry scripts agree: data from the checkpoint, evaluation folders replaced whole, ratios only
against a named baseline, selection on the trained channels, no folder left by a failed start,
the losses shown apart, resolved values in config.json, and an export that carries its preprocessing."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import export
import predict
import test_dw
import test_rrdb
import train_dw
import train_rrdb
from conftest import file_hashes, make_list_root

SMALL = ["--backbone", "small", "--img-size", "16", "--batch-size", "6", "--workers", "0", "--epochs", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dwg run and a plain_zero run on a list root with real JPEG files."""
    base = tmp_path_factory.mktemp("agree")
    root = make_list_root(base / "data", classes=3, per_class=8, size=24)
    for model in ("dwg", "plain_zero"):
        assert train_dw.main(["--model", model, "--data-root", str(root), *SMALL, "--out", str(base / model)]) == 0
    return root, base


def test_evaluation_takes_the_checkpoints_data_and_replaces_its_folder(runs, capsys):
    root, base = runs
    ev = base / "dwg" / "eval-test"
    assert test_dw.main(["--checkpoint", str(base / "dwg"), "--combos", "RGB,R", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == f"data: {root} (the checkpoint's; --data-root to use other data)"
    (ev / "confusion_GB.png").write_bytes(b"left by an earlier evaluation")
    assert test_dw.main(["--checkpoint", str(base / "dwg"), "--combos", "RGB,R", "--workers", "0"]) == 0
    assert not (ev / "confusion_GB.png").exists()
    assert [r["combo"] for r in json.loads((ev / "results.json").read_text())] == ["RGB", "R"]
    # A folder that is not an evaluation is never replaced: refused, every byte kept.
    other = base / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    before = file_hashes(other)
    with pytest.raises(SystemExit) as exc:
        test_dw.main(["--checkpoint", str(base / "dwg"), "--workers", "0", "--out", str(other)])
    assert exc.value.code == 2 and "holds other files" in capsys.readouterr().err
    assert file_hashes(other) == before


def test_several_task1_checkpoints_make_one_table(runs, capsys):
    _, base = runs
    out = base / "cmp"
    assert test_dw.main(["--checkpoints", str(base / "dwg"), str(base / "plain_zero"), "--combos", "RGB,GB,R",
                         "--workers", "0", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    expected = [(m, c) for m in ("dwg", "plain_zero") for c in ("RGB", "GB", "R")]
    assert [(r["model"], r["combo"]) for r in rows] == expected
    by = {(r["model"], r["combo"]): r for r in rows}
    for c in ("RGB", "GB", "R"):
        assert by[("dwg", c)]["gap_to_first"] == 0
        assert by[("plain_zero", c)]["gap_to_first"] == pytest.approx(
            by[("plain_zero", c)]["accuracy"] - by[("dwg", c)]["accuracy"])
    assert {"precision", "recall", "f1"} <= set(rows[0])
    assert (out / "accuracy_16px.png").stat().st_size > 1000
    assert "gap_to_first" in capsys.readouterr().out


def test_task2_ratios_only_against_a_named_baseline(tmp_path, capsys):
    tiny = ["--data-root", "synthetic", "--limit", "48", "--img-size", "16", "--batch-size", "16", "--workers", "0",
            "--epochs", "1"]
    for model in ("shallow", "resnet34"):
        assert train_rrdb.main(["--model", model, *tiny, "--out", str(tmp_path / model)]) == 0
    capsys.readouterr()
    assert test_rrdb.main(["--checkpoints", str(tmp_path / "shallow"), str(tmp_path / "resnet34"), "--limit", "24",
                           "--workers", "0"]) == 0
    rows = json.loads((tmp_path / "shallow" / "compare-test" / "results.json").read_text())
    assert [r["model"] for r in rows] == ["shallow", "resnet34"]
    assert not any("ratio_to_baseline" in r or "pass_90" in r for r in rows)
    assert test_rrdb.main(["--checkpoints", str(tmp_path / "shallow"), "--baseline", str(tmp_path / "resnet34"),
                           "--limit", "24", "--workers", "0", "--out", str(tmp_path / "vs")]) == 0
    rows = json.loads((tmp_path / "vs" / "results.json").read_text())
    assert [r["model"] for r in rows] == ["resnet34", "shallow"] and "pass_90" in rows[1]
    # without --out, the comparison goes beside the first run named, not the baseline
    assert test_rrdb.main(["--checkpoints", str(tmp_path / "shallow"), "--baseline", str(tmp_path / "resnet34"),
                           "--limit", "24", "--workers", "0"]) == 0
    assert not (tmp_path / "resnet34" / "compare-test").exists()
    assert "pass_90" in json.loads((tmp_path / "shallow" / "compare-test" / "results.json").read_text())[1]
    # the baseline named by its folder and, among the checkpoints, by its file: one model, evaluated once
    assert test_rrdb.main(["--checkpoints", str(tmp_path / "shallow"), str(tmp_path / "resnet34" / "best.pt"),
                           "--baseline", str(tmp_path / "resnet34"), "--limit", "24", "--workers", "0",
                           "--out", str(tmp_path / "once")]) == 0
    rows = json.loads((tmp_path / "once" / "results.json").read_text())
    assert [r["model"] for r in rows] == ["shallow", "resnet34"] and "pass_90" in rows[1]
    capsys.readouterr()
    # A baseline under twice chance (here 6 classes) is said to be worth little; above it, silence.
    for accuracy, warned in ((0.30, True), (0.34, False)):
        rows = test_rrdb.add_ratios([{"accuracy": accuracy}, {"accuracy": 0.3}], accuracy, 6)
        assert rows[1]["ratio_to_baseline"] == pytest.approx(0.3 / accuracy)
        assert ("ratios against it say little" in capsys.readouterr().err) == warned


def test_a_single_channel_expert_is_selected_on_its_channel(runs, tmp_path):
    root, _ = runs
    out = tmp_path / "r"
    assert train_dw.main(["--model", "plain_zero", "--data-root", str(root), *SMALL, "--train-channels", "R",
                          "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["val_combos"] == "R"
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("val_acc_")] == ["val_acc_R"]


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "new" / "run"
    with pytest.raises(SystemExit):
        train_rrdb.main(["--model", "shallow", "--data-root", str(root), *SMALL[2:], "--teacher",
                         str(tmp_path / "missing.pt"), "--out", str(out)])
    assert "checkpoint not found" in capsys.readouterr().err
    assert not out.exists()


def test_training_line_config_and_log_say_what_the_run_did(runs, capsys):
    root, base = runs
    config = json.loads((base / "dwg" / "config.json").read_text())
    # Left to the model on the command line, written as the model took them.
    assert (config["stem_base"], config["combo_bn"]) == (True, True)
    out = base / "dwg-2"
    assert train_dw.main(["--model", "dwg", "--data-root", str(root), *SMALL, "--sandwich-every", "1",
                          "--out", str(out)]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("epoch 1/1") and "val acc" in s)
    assert " loss " in line and " distill " in line
    last = (out / "log.csv").read_text().splitlines()
    assert last[0].endswith(",train_distill") and float(last[1].split(",")[-1]) > 0


def _prepare_from_sidecar(path, meta):
    """The export's .json followed by hand, with PIL and numpy only."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = meta["resize"] / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = img.size
    left, top = (w - meta["crop"]) // 2, (h - meta["crop"]) // 2
    x = np.asarray(img.crop((left, top, left + meta["crop"], top + meta["crop"])), dtype=np.float32)
    x = x[:, :, ["RGB".index(c) for c in meta["channels"]]] * meta["scale"]
    x = (x - np.array(meta["mean"], dtype=np.float32)) / np.array(meta["std"], dtype=np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def test_the_export_sidecar_reproduces_predict(runs, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    root, base = runs
    assert export.main(["--checkpoint", str(base / "dwg"), "--channels", "GB", "--formats", "onnx",
                        "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "dwg_GB.json").read_text())
    session = onnxruntime.InferenceSession(str(tmp_path / "dwg_GB.onnx"), providers=["CPUExecutionProvider"])
    images = sorted(str(p) for p in (root / "images").rglob("*.JPEG"))[:6]
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(base / "dwg"), "--channels", "GB", "--top", "3", *images]) == 0
    from_checkpoint = capsys.readouterr().out.splitlines()
    assert predict.main(["--checkpoint", str(tmp_path / "dwg_GB.onnx"), "--top", "3", *images]) == 0
    from_onnx = capsys.readouterr().out.splitlines()
    for path, a, b in zip(images, from_checkpoint, from_onnx):
        assert a.split(" ")[1] == b.split(" ")[1], (a, b)  # the same top class through both
        probs = torch.from_numpy(session.run(None, {meta["input"]: _prepare_from_sidecar(path, meta)})[0][0]).softmax(0)
        top = int(probs.argmax())
        assert a.split(": ", 1)[1].startswith(f"{meta['classes'][top]} ")
        shown = float(a.split(": ", 1)[1].split(", ")[0].split(" ")[-1].rstrip("%")) / 100
        assert shown == pytest.approx(float(probs[top]), abs=0.02)


def test_predict_reads_every_readable_file_then_reports_the_rest(runs, tmp_path, capsys):
    _, base = runs
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.full((20, 20, 3), 180, np.uint8)).save(folder / "c.png")
    with pytest.raises(SystemExit) as exc:
        predict.main(["--checkpoint", str(base / "dwg"), str(folder)])
    out, err = capsys.readouterr()
    assert exc.value.code == 2
    assert [line.split(":")[0] for line in out.splitlines()] == [str(folder / "a.png"), str(folder / "c.png")]
    assert f"cannot read image {folder / 'b.jpg'}" in err and "1 of 3 image(s) could not be read" in err
    assert os.path.exists(folder / "b.jpg")


def test_train_py_run_directly_points_to_the_entry_scripts():
    from conftest import run_script
    r = run_script("train.py", "--epochs", "1")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert "train_dw.py" in r.stderr and "train_rrdb.py" in r.stderr

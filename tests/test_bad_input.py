"""Every entry point against bad values and bad files: one `error:` line, exit 2, no traceback,
and no file of an existing run folder changed."""
import os

import numpy as np
import pytest
from PIL import Image

import bench
import export
import gpu_check
import predict
import test_dw
import test_rrdb
import train_dw
import train_rrdb
from conftest import file_hashes, make_list_root
from experiments import results

ENTRY = {"train_dw": train_dw.main, "train_rrdb": train_rrdb.main, "test_dw": test_dw.main,
         "test_rrdb": test_rrdb.main, "predict": predict.main, "export": export.main, "bench": bench.main,
         "gpu_check": gpu_check.main, "results": results.main}
TINY = ["--data-root", "synthetic", "--limit", "32", "--img-size", "16", "--batch-size", "16", "--workers", "0",
        "--epochs", "1", "--backbone", "small"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished run, a data root with bad files, a file and a few odd images."""
    base = tmp_path_factory.mktemp("bad")
    run = base / "run"
    assert train_dw.main(["--model", "plain_zero", *TINY, "--out", str(run)]) == 0
    data = make_list_root(base / "data")
    lists = {
        "bom": "\ufeff" + (data / "train.txt").read_text(),
        "latin1": None,
        "float_label": "images/n00000000/n00000000_0.JPEG 1.5\n",
        "superscript": "images/n00000000/n00000000_0.JPEG \u00b2\n",
        "absolute": "/etc/passwd 0\n",
        "climbing": "../../outside.JPEG 0\n",
        "huge_label": "images/n00000000/n00000000_0.JPEG 0\nimages/n00000000/n00000000_1.JPEG 12345678901234567890\n",
    }
    classes = {"classes_empty": b"", "classes_blank": b"\n  \n\n",
               "classes_latin1": "caf\u00e9 0 x\n".encode("latin-1"),
               "classes_huge": b"n0 0 tench\nn1 99999999999 horn\n"}
    roots = {}
    for name, text in lists.items():
        root = base / f"data_{name}"
        os.symlink(data / "images", root / "images") if root.exists() else None
        root.mkdir()
        os.symlink(data / "images", root / "images")
        for split in ("train", "val", "test"):
            (root / f"{split}.txt").write_bytes((data / f"{split}.txt").read_bytes())
        if name == "latin1":
            bad_line = "images/caf\u00e9.JPEG 0\n".encode("latin-1")
            (root / "train.txt").write_bytes((data / "train.txt").read_bytes() + bad_line)
        else:
            (root / "train.txt").write_text(text, encoding="utf-8")
        roots[name] = root
    for name, raw in classes.items():
        root = base / f"data_{name}"
        root.mkdir()
        os.symlink(data / "images", root / "images")
        for split in ("train", "val", "test"):
            (root / f"{split}.txt").write_bytes((data / f"{split}.txt").read_bytes())
        (root / "classes.txt").write_bytes(raw)
        roots[name] = root
    # another architecture's checkpoint: only BatchNorm's step counters share names with ours
    import torch

    from utils.checkpoint import save_atomic
    ckpt = torch.load(run / "best.pt", weights_only=False)
    ckpt["state_dict"] = {**{k: v for k, v in ckpt["state_dict"].items() if k.endswith("num_batches_tracked")},
                          "head.weight": torch.zeros(7, 7)}
    save_atomic(ckpt, base / "counters.pt")
    # hand-made checkpoints: a field missing, of the wrong type, a config that builds nothing
    good = torch.load(run / "best.pt", weights_only=False)
    save_atomic({k: v for k, v in good.items() if k != "args"}, base / "no_args.pt")
    save_atomic({**good, "classes": {"a": 1}}, base / "classes_dict.pt")
    save_atomic({**good, "config": {"backbone": 5}}, base / "config_bad.pt")
    (base / "locked").mkdir()
    (base / "locked" / "lock").mkdir()  # a folder where the lock file goes
    images = base / "images"
    images.mkdir()
    Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(images / "float.tiff")
    (base / "a_file").write_text("not a folder")
    return {"run": run, "data": data, "roots": roots, "images": images, "file": base / "a_file", "base": base}


def cases(w):
    run, ck = str(w["run"]), str(w["run"] / "best.pt")
    out = ["--out", str(w["base"] / "new")]
    r = {k: str(v) for k, v in w["roots"].items()}
    train = [  # (flags, what the message says)
        (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["--img-size", "0"], "argument --img-size: must be at least 8, got 0"),
        (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
        (["--epochs", "two"], "argument --epochs: expected an integer, got 'two'"),
        (["--limit", "0"], "argument --limit: must be at least 1, got 0"),
        (["--lr", "-1"], "argument --lr: must be at least 0.0, got -1"),
        (["--lr", "nan"], "argument --lr: must be at least 0.0, got nan"),
        (["--momentum", "1"], "argument --momentum: must be in [0, 1), got 1"),
        (["--label-smoothing", "1"], "argument --label-smoothing: must be in [0, 1), got 1"),
        (["--full-prob", "1.5"], "argument --full-prob: must be in [0, 1], got 1.5"),
        (["--kd-alpha", "2"], "argument --kd-alpha: must be in [0, 1], got 2"),
        (["--kd-temperature", "0"], "argument --kd-temperature: must be at least 0.001, got 0"),
        (["--workers", "-1"], "argument --workers: must be at least 0, got -1"),
        (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
        (["--log-every", "0"], "argument --log-every: must be at least 1, got 0"),
        (["--sandwich-subsets", "0"], "argument --sandwich-subsets: must be at least 1, got 0"),
        (["--warmup-epochs", "-1"], "argument --warmup-epochs: must be at least 0.0, got -1"),
        (["--train-channels", ""], "argument --train-channels: must not be empty"),
        (["--val-combos", " "], "argument --val-combos: must not be empty"),
        (["--train-channels", "RR"], "channel 'R' repeated in combination 'RR'"),
        (["--val-combos", "RGB,RX"], "unknown channel 'X' in combination 'RX'"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--backbone", "nope"], "unknown backbone 'nope'"),
        (["--channel-aug", "nope"], "argument --channel-aug: invalid choice: 'nope'"),
        (["--amp", "fp8"], "argument --amp: invalid choice: 'fp8'"),
        (["--data-root", str(w["base"] / "none")], "data root not found"),
        (["--pretrained", str(w["base"] / "none.pth")], "none.pth"),
        (["--init-from", str(w["base"] / "none.pt")], "checkpoint not found"),
        (["--teacher", str(w["base"] / "none.pt")], "checkpoint not found"),
        (["--init-from", str(w["base"] / "counters.pt")], "no learned tensor of 'plain_zero' fits this model"),
        (["--data-root", r["bom"], "--batch-size", "4", "--out", str(w["base"] / "bom")], None),  # a BOM is fine
        (["--data-root", r["latin1"]], "train.txt:13: not UTF-8 text (byte 0xe9)"),
        (["--data-root", r["float_label"]], "train.txt:1: malformed line"),
        (["--data-root", r["superscript"]], "train.txt:1: malformed line"),
        (["--data-root", r["absolute"]], "train.txt:1: image path '/etc/passwd' leaves the data root"),
        (["--data-root", r["climbing"]], "train.txt:1: image path '../../outside.JPEG' leaves the data root"),
        (["--data-root", r["huge_label"]], "train.txt:2: label 12345678901234567890 with only 2 distinct labels"),
        (["--data-root", r["classes_empty"]], "classes.txt: no classes in it"),
        (["--data-root", r["classes_blank"]], "classes.txt: no classes in it"),
        (["--data-root", r["classes_latin1"]], "classes.txt:1: not UTF-8 text (byte 0xe9)"),
        (["--data-root", r["classes_huge"]], "classes.txt:2: label 99999999999 with only 2 distinct labels"),
        (["--momentum", "0"], "the optimizer refuses --lr 0.1 --momentum 0.0"),
        (["--val-combos", "RGB,R,RGB"], "combination 'RGB' is listed twice in 'RGB,R,RGB'"),
    ]
    listed = [("train_dw", [*TINY, *out, *flags], msg) for flags, msg in train]
    made = {k: str(w["base"] / f"{k}.pt") for k in ("no_args", "classes_dict", "config_bad")}
    for entry in ("predict", "test_dw", "export"):  # hand-made checkpoints
        image = [str(w["images"] / "float.tiff")] if entry == "predict" else []
        listed += [
            (entry, ["--checkpoint", made["no_args"], *image], "records no training image size; pass --img-size"),
            (entry, ["--checkpoint", made["classes_dict"], *image], "field 'classes' is a dict, not a list"),
            (entry, ["--checkpoint", made["config_bad"], *image], "unknown backbone 5; choose from"),
        ]
    listed += [
        ("train_dw", [*TINY, "--out", str(w["base"] / "locked")], "is a folder where the run's lock file goes"),
        ("test_dw", ["--checkpoint", ck, "--combos", "RGB,BGR,RGB"], "combination 'RGB' is listed twice"),
        ("export", ["--checkpoint", ck, "--out", str(w["file"])], "cannot write into --out"),
        ("export", ["--checkpoint", ck, "--out", str(w["file"] / "sub")], "cannot write into --out"),
        ("results", ["--part", "task1", "--no-train", "--out", str(w["base"] / "no_runs"), "--data-root", "synthetic"],
         "--no-train: no finished run of these rows"),
        ("train_dw", [*TINY, "--out", run], "already holds a run"),
        ("train_dw", [*TINY, "--out", str(w["file"])], "is a file, not a folder"),
        ("train_dw", ["--resume", run, "--lr", "0.5"], "--lr cannot change"),
        ("train_dw", ["--resume", run, "--model", "dwg"], "is a checkpoint of 'plain_zero', not 'dwg'"),
        ("train_dw", ["--resume", str(w["base"] / "none")], "checkpoint not found"),
        ("train_rrdb", ["--model", "dwg", *TINY[:-2], "--out", str(w["base"] / "x")],
         "model 'dwg' is a Task 1 model; train it with train_dw.py"),
        ("train_dw", [*TINY, "--backbone", "densenet121", "--img-size", "8", "--out", run, "--overwrite"],
         "--img-size 8 is too small"),
        ("train_rrdb", ["--batch-size", "0"], "argument --batch-size: must be at least 1"),
        ("test_dw", ["--checkpoint", ck, "--combos", ""], "argument --combos: must not be empty"),
        ("test_dw", ["--checkpoint", ck, "--combos", "RGB,RX"], "unknown channel 'X'"),
        ("test_dw", ["--checkpoint", ck, "--img-sizes", "0"], "argument --img-sizes: must be at least 8, got 0"),
        ("test_dw", ["--checkpoint", ck, "--img-sizes", "32,"], "expected comma-separated integers"),
        ("test_dw", ["--checkpoint", ck, "--batch-size", "0"], "must be at least 1"),
        ("test_dw", ["--checkpoint", ck, "--limit", "0"], "must be at least 1"),
        ("test_dw", ["--checkpoint", ck, "--recalibrate", "-5"], "must be at least 0"),
        ("test_dw", ["--checkpoint", ck, "--split", "dev"], "invalid choice: 'dev'"),
        ("test_dw", ["--checkpoint", ck, "--as-model", "nope"], "unknown model 'nope'"),
        ("test_dw", ["--checkpoint", ck, "--as-model", "shallow"], "model 'shallow' has no option 'backbone'"),
        ("test_dw", ["--checkpoint", str(w["base"] / "none.pt")], "checkpoint not found"),
        ("test_rrdb", ["--checkpoints", ck, "--img-size", "0"], "must be at least 8"),
        ("test_rrdb", ["--checkpoints", ck, "--batch-size", "0"], "must be at least 1"),
        ("test_rrdb", ["--checkpoints", str(w["base"] / "none.pt")], "checkpoint not found"),
        ("predict", ["--checkpoint", ck, "--top", "0", ck], "argument --top: must be at least 1, got 0"),
        ("predict", ["--checkpoint", ck, "--channels", "RX", ck], "unknown channel 'X'"),
        ("predict", ["--checkpoint", ck, str(w["images"] / "float.tiff")], "pixel mode F (32-bit float)"),
        ("predict", ["--checkpoint", ck, str(w["base"] / "none.jpg")], "image not found"),
        ("export", ["--checkpoint", ck, "--formats", "tflite"], "argument --formats"),
        ("export", ["--checkpoint", ck, "--channels", "RR"], "channel 'R' repeated"),
        ("export", ["--checkpoint", ck, "--img-size", "0"], "must be at least 8"),
        ("export", ["--checkpoint", ck, "--atol", "-1"], "must be at least 0.0"),
        ("bench", ["--parts", "foo"], "argument --parts: foo: choose from"),
        ("bench", ["--threads", "0"], "argument --threads: must be at least 1"),
        ("bench", ["--batch-sizes", "1,,2"], "expected comma-separated integers"),
        ("bench", ["--img-sizes", "0"], "must be at least 8"),
        ("bench", ["--device", "tpu"], "invalid choice: 'tpu'"),
        ("gpu_check", ["--steps", "0"], "argument --steps: must be at least 1"),
        ("gpu_check", ["--limit", "0"], "argument --limit: must be at least 1"),
        ("results", ["--seeds", "a"], "argument --seeds: expected an integer, got 'a'"),
        ("results", ["--jobs", "0"], "argument --jobs: must be at least 1"),
        ("results", ["--epochs", "0"], "argument --epochs: must be at least 1"),
        ("results", ["--part", "nope"], "argument --part: invalid choice: 'nope'"),
        ("test_rrdb", ["--checkpoints", ck], "is a Task 1 model ('plain_zero'): evaluate it with test_dw.py"),
        ("train_dw", [*TINY, "--mixup", "inf"], "argument --mixup: must be finite, got inf"),
        ("train_dw", [*TINY, "--warmup-epochs", "inf"], "argument --warmup-epochs: must be finite, got inf"),
        ("train_dw", [*TINY, "--lr", "1e308"], "argument --lr: must be at most 1e+30, got 1e308"),
        ("train_dw", [*TINY, "--img-size", "60000"], "argument --img-size: must be at most 2048, got 60000"),
        ("test_dw", ["--checkpoint", ck, "--img-sizes", "32,100000"], "argument --img-sizes: must be at most 2048"),
        ("results", ["--part", "task1-sweep", "--models", "dwg,dgw", "--out", str(w["base"] / "typo")],
         "--models dgw: not a row of --part task1-sweep (its rows: plain_zero,"),
        ("results", ["--part", "task2", "--models", "dwg", "--out", str(w["base"] / "typo")],
         "--models picks Task 1 rows; --part task2 has none"),
    ]
    return listed


def test_every_bad_input_is_one_line_and_exit_2(world, capsys):
    before = file_hashes(world["run"])
    checked = 0
    for entry, argv, message in cases(world):
        capsys.readouterr()
        if message is None:
            assert ENTRY[entry](argv) == 0, (entry, argv)
            continue
        if entry in ("test_dw", "test_rrdb"):
            argv = ["--data-root", "synthetic", *argv]
        with pytest.raises(SystemExit) as exc:
            ENTRY[entry](argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2, (entry, argv, err)
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (entry, argv, err)
        checked += 1
    assert checked == 105
    assert not (world["base"] / "typo").exists()  # a refused --models writes nothing
    assert file_hashes(world["run"]) == before  # no refusal touched the existing run


@pytest.mark.parametrize("entry", sorted(ENTRY))
def test_help_shows_real_defaults_only(entry, capsys):
    with pytest.raises(SystemExit) as exc:
        ENTRY[entry](["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "(default: None)" not in out and "(default: [])" not in out
    if entry.startswith("train"):
        assert "(default: 224)" in " ".join(out.split())  # --img-size

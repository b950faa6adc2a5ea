"""Every entry point against bad values and bad files: one `error:` line, exit 2, no traceback,
and no file of an existing run folder changed."""
import copy
import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
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
from utils.checkpoint import save_atomic

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
    made_files(base, run)
    return {"run": run, "data": data, "roots": roots, "images": images, "file": base / "a_file", "base": base}


def made_files(base, run):
    """Damaged checkpoints, logs, export sidecars and tables, and data of other class names."""
    make_list_root(base / "other_names", classes=6, per_class=4, size=16)  # wnids, not the run's class names
    made_checkpoints(run, base / "made")
    made_sidecars(base / "sidecars")
    record = {"row": "plain_zero", "seed": 0, "epochs": 1, "made": {}, "val_best": 0.5, "minutes": 1.0}
    records = {"acc_high": [{**record, "metrics": [{"accuracy": 1.5}]}],
               "acc_word": [{**record, "metrics": [{"accuracy": "high"}]}],
               "metrics_map": [{**record, "metrics": {"RGB": 0.5}}], "twice": [{**record, "metrics": []}] * 2,
               "no_seed": [{k: v for k, v in record.items() if k != "seed"}], "object": {"row": "plain_zero"}}
    for name, value in records.items():
        (base / f"records_{name}.json").write_text(json.dumps(value))
    (base / "records_cut.json").write_text('[{"row": "plain_zero"')
    (base / "pages").mkdir()
    (base / "pages" / "task1-results.md").write_text("<!-- task1-lr:end -->\nold\n<!-- task1-lr:start -->\n")


# A run stopped inside the first of its two epochs, each field then damaged (one folder each).
DAMAGED = {
    "step_huge": lambda c: c.update(step=10 ** 6),
    "epoch_beyond": lambda c: c.update(epoch=5, step=0),
    "epochs_str": lambda c: c["args"].update(epochs="x"),
    "groups_int": lambda c: c["optimizer"].update(param_groups=3),
    "momentum_shape": lambda c: c["optimizer"].update(state={0: {"momentum_buffer": torch.zeros(2)}}),
    "scheduler_list": lambda c: c.update(scheduler=[1]),
    "scheduler_huge": lambda c: c["scheduler"].update(last_epoch=10 ** 12),
    "rng_bad": lambda c: c["rng"].update(python=[1, [2], None]),
    "lr_str": lambda c: c["args"].update(lr="abc"),
    "model_opt_bad": lambda c: c["args"].update(model_opt=[("combo_bn", 5)]),
    "model_int": lambda c: c.update(model=5),
    "config_list": lambda c: c.update(config=[]),
    "img_size_huge": lambda c: c["args"].update(img_size=10 ** 6),
    "averaged": lambda c: c.update(averaged=True),  # an export of the moving average alone
    "args_int_key": lambda c: c["args"].update({1: 2}),
    "momentum_str": lambda c: c["optimizer"]["param_groups"][0].update(momentum="x"),
    "epoch_huge": lambda c: c.update(epoch=10 ** 20),
    "task2_model": lambda c: c.update(model="shallow"),
}


def made_checkpoints(run, made):
    good = torch.load(run / "last.pt", weights_only=False)
    good["args"]["epochs"], good["step"] = 2, 1
    for name, damage in DAMAGED.items():
        ckpt = copy.deepcopy(good)
        damage(ckpt)
        (made / name).mkdir(parents=True)
        save_atomic(ckpt, made / name / "last.pt")
    for name in ("log_folder", "log_huge"):  # the finished run, its log damaged
        shutil.copytree(run, made / name)
        (made / name / "log.csv").unlink()
    (made / "log_folder" / "log.csv").mkdir()
    (made / "log_huge" / "log.csv").write_text("epoch,lr\n1," + "9" * 200_000 + "\n")


def made_sidecars(folder):
    """A two-channel ONNX classifier of 16 px images into 6 classes, beside .json files that do
    not describe it or describe nothing."""
    folder.mkdir()
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 2, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor("w", TensorProto.FLOAT, [2, 6], [0.1] * 12)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    good = {"channels": "RG", "input": "image", "resize": 18, "antialias": True, "crop": 16, "scale": 1 / 255,
            "mean": [0.485, 0.456], "std": [0.229, 0.224], "classes": [f"c{i}" for i in range(6)]}
    bad = {"list": [1, 2], "no_crop": {k: v for k, v in good.items() if k != "crop"},
           "channel_x": {**good, "channels": "RX"}, "mean_3": {**good, "mean": [0.4, 0.4, 0.4]},
           "class_ints": {**good, "classes": [1, 2, 3, 4, 5, 6]}, "resize_neg": {**good, "resize": -5},
           "resize_huge": {**good, "resize": 10 ** 6}, "three_channels": {**good, "channels": "RGB", "mean": [0.4] * 3,
                                                                        "std": [0.2] * 3},
           "input_name": {**good, "input": "img"}, "five_classes": {**good, "classes": ["a", "b", "c", "d", "e"]},
           "garbage_onnx": good}
    for name, meta in bad.items():
        if name == "garbage_onnx":
            (folder / f"{name}.onnx").write_bytes(b"not a model")
        else:
            onnx.save(model, folder / f"{name}.onnx")
        (folder / f"{name}.json").write_text(json.dumps(meta))
    shutil.copy(folder / "list.onnx", folder / "bad_json.onnx")
    (folder / "bad_json.json").write_text('{"channels": "RG",')


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
        (["--single-prob", "-0.1"], "argument --single-prob: must be at least 0, got -0.1"),
        (["--single-prob", "often"], "argument --single-prob: expected a probability or 'equal', got 'often'"),
        (["--single-prob", "0.5", "--channel-aug", "shuffle"],
         "--single-prob 0.5 changes how subsets are drawn; this run trains with --channel-aug shuffle"),
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
            (entry, ["--checkpoint", made["classes_dict"], *image], "field 'classes' must be a list, got {'a': 1}"),
            (entry, ["--checkpoint", made["config_bad"], *image], "backbone must be a string, got 5 (int)"),
        ]
    listed += [
        ("train_dw", [*TINY, "--out", str(w["base"] / "locked")], "is a folder where the run's lock file goes"),
        ("test_dw", ["--checkpoint", ck, "--combos", "RGB,BGR,RGB"], "combination 'RGB' is listed twice"),
        ("export", ["--checkpoint", ck, "--out", str(w["file"])], "cannot write into --out"),
        ("export", ["--checkpoint", ck, "--out", str(w["file"] / "sub")], "cannot write into --out"),
        ("results", ["--part", "task1", "--no-train", "--out", str(w["base"] / "no_runs"), "--data-root", "synthetic"],
         "no finished run of this part under"),
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
        ("bench", ["--epoch-models", "dwg,dwg-fast"], "argument --epoch-models: dwg-fast: choose from plain_zero"),
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
        ("results", ["--part", "task1-lr", "--lrs", "0.1,fast"], "argument --lrs: expected a number, got 'fast'"),
        ("results", ["--part", "task1-lr", "--lrs", "0.1,"], "argument --lrs: expected comma-separated numbers"),
        ("results", ["--part", "task2", "--update-docs", "--docs", str(w["base"] / "no-docs"),
                     "--out", str(w["base"] / "typo")], "task2.md to update its task2 section"),
        ("bench", ["--parts", "complexity", "--update-docs", "--docs", str(w["base"] / "no-docs"),
                   "--out", str(w["base"] / "typo")], "to update its complexity section"),
        ("test_dw", ["--checkpoints", run, ck], "are the same checkpoint"),
        ("test_rrdb", ["--checkpoints", ck, run], "are the same checkpoint"),
    ]
    return listed + damaged_cases(w) + model_option_cases(w) + sidecar_cases(w) + bound_cases(w)


def bound_cases(w):
    """Numbers beyond what the machine holds, outputs that would replace an input, rates that
    are no rates, a page whose markers are out of order."""
    ck, image, typo = str(w["run"] / "best.pt"), str(w["images"] / "float.tiff"), str(w["base"] / "typo")
    records = ["--part", "task1-lr", "--no-train", "--data-root", "synthetic", "--out", typo, "--records"]
    return [("train_dw", [*TINY, "--epochs", "1" + "0" * 20], "argument --epochs: must be at most 100000"),
            ("train_dw", [*TINY, "--seed", "1" + "0" * 20], "argument --seed: must be at most 9223372036854775807"),
            ("test_rrdb", ["--checkpoints", ck, "--workers", "100000"], "argument --workers: must be at most 256"),
            ("train_dw", [*TINY, "--out", typo, "--model", "dwg", "--model-opt", "vocab='XYZ'"],
             "the data's band 'R' is not one of them"),
            ("predict", ["--checkpoint", ck, "--out", ck, image], "is one of the files it reads"),
            ("predict", ["--checkpoint", ck, "--out", str(w["file"]), image], "exists and is not a table predict.py"),
            ("results", ["--part", "task1-lr", "--update-docs", "--docs", str(w["base"] / "pages"), "--out", typo],
             "markers, in that order and once"),
            ("results", [*records, str(w["base"] / "records_acc_high.json")], "accuracy must be in [0, 1], got 1.5"),
            ("results", [*records, str(w["base"] / "records_acc_word.json")], "accuracy must be a number, got"),
            ("results", [*records, str(w["base"] / "records_metrics_map.json")], "record 0 'metrics' must be a list"),
            ("results", [*records, str(w["base"] / "records_no_seed.json")], "a row has no field 'seed'"),
            ("results", [*records, str(w["base"] / "records_object.json")], "not a table"),
            ("results", [*records, str(w["base"] / "records_cut.json")], "records_cut.json: Expecting"),
            ("results", [*records, str(w["base"] / "records_twice.json")], "record 1 repeats record 0")]


def damaged_cases(w):
    made = {name: str(w["base"] / "made" / name) for name in [*DAMAGED, "log_folder", "log_huge"]}
    image = str(w["images"] / "float.tiff")
    resumed = {"step_huge": "field 'step' 1000000 is beyond the 2 batches of an epoch",
               "epoch_beyond": "field 'epoch' says 5 epoch(s) and 0 step(s) done of a 2-epoch schedule",
               "epochs_str": "field 'args.epochs' must be an integer, got 'x' (str)",
               "groups_int": "field 'optimizer.param_groups' must be a list, got 3 (int)",
               "momentum_shape": "field 'optimizer' does not fit this run (its momentum_buffer of shape (2,)",
               "scheduler_list": "field 'scheduler' must be a mapping, got [1] (list)",
               "scheduler_huge": "field 'scheduler.last_epoch' must be in [0, 4], got 1000000000000",
               "rng_bad": "field 'rng' does not fit this run",
               "lr_str": "field 'args.lr' is 'abc': expected a number",
               "model_opt_bad": "(its args.model_opt): combo_bn must be true or false, got 5 (int)",
               "log_folder": "log.csv is a folder where the run's log goes",
               "log_huge": "cannot read the run's log",
               "model_int": "field 'model' must be a string, got 5 (int)",
               "args_int_key": "field 'args' has the key 1, not a flag's name",
               "momentum_str": "field 'optimizer' does not fit this run (its momentum 'x' is not a finite number",
               "epoch_huge": "field 'epoch' must be in [0, 100000]",
               "task2_model": "a Task 2 model; resume it with train_rrdb.py"}
    return [*[("train_dw", ["--resume", made[name]], message) for name, message in resumed.items()],
            ("train_dw", ["--resume", made["lr_str"], "--epochs", "1"], "field 'args.lr' is 'abc'"),
            ("train_dw", ["--resume", made["step_huge"], "--epochs", "1"],
             "--epochs 1: " + made["step_huge"] + "/last.pt has done 1 epoch(s) and part of the next"),
            ("test_dw", ["--checkpoint", made["config_list"]], "field 'config' must be a mapping, got [] (list)"),
            ("predict", ["--checkpoint", made["img_size_huge"], image], "field 'args.img_size' must be in [1, 2048]"),
            ("predict", ["--checkpoint", made["averaged"], "--no-ema", image],
             "holds only the moving average of the weights"),
            ("test_dw", ["--checkpoint", str(w["run"]), "--data-root", str(w["base"] / "other_names")],
             "names label 0 'warm disc', the data 'n00000000': other classes")]


def model_option_cases(w):
    out = ["--out", str(w["base"] / "typo")]
    rrdb = [*TINY[:-2], *out, "--model", "shallow", "--model-opt"]
    dwg = [*TINY, *out, "--model", "dwg", "--model-opt"]
    return [("train_rrdb", [*rrdb, "widths=64"], "model 'shallow' refuses --model-opt: widths must be a list, got 64"),
            ("train_rrdb", [*rrdb, "widths=(64,-1,8)"], "widths[1] must be in [1, 2048], got -1"),
            ("train_rrdb", [*rrdb, "widths=(64,64,1000000)"], "widths[2] must be in [1, 2048], got 1000000"),
            ("train_rrdb", [*rrdb, "first_kernel=4"], "first_kernel must be odd, got 4"),
            ("train_rrdb", [*rrdb, "deploy=1"], "deploy must be true or false, got 1 (int)"),
            ("train_dw", [*dwg, "templates=1000000"], "templates must be in [1, 4096], got 1000000"),
            ("train_dw", [*dwg, "hidden=-3"], "hidden must be in [1, 4096], got -3"),
            ("train_dw", [*dwg, "embed_dim=2.5"], "embed_dim must be an integer, got 2.5 (float)"),
            ("train_dw", [*dwg, "vocab='RGBRGB'"], "vocab must be 1 to 256 distinct channel names")]


def sidecar_cases(w):
    image = str(w["images"] / "float.tiff")  # never read: the export is refused first
    messages = {"bad_json": "bad_json.json: Expecting", "list": "list.json: its JSON is [1, 2] (list), not a mapping",
                "no_crop": "no_crop.json: field 'crop' is missing",
                "channel_x": "channel_x.json: field 'channels': unknown channel 'X'",
                "mean_3": "mean_3.json: field 'mean' must have 2 item(s), got 3",
                "class_ints": "class_ints.json: field 'classes'[0] must be a string, got 1 (int)",
                "resize_neg": "resize_neg.json: field 'resize' must be in [16, 2341], got -5",
                "resize_huge": "resize_huge.json: field 'resize' must be in [16, 2341], got 1000000",
                "three_channels": "three_channels.onnx: 3 channels in the .json, 2 in the model",
                "input_name": "input_name.json: field 'input' 'img' is not an input of",
                "five_classes": "five_classes.onnx: 5 classes in the .json, 6 in the model",
                "garbage_onnx": "cannot read " + str(w["base"] / "sidecars" / "garbage_onnx.onnx")}
    return [("predict", ["--checkpoint", str(w["base"] / "sidecars" / f"{name}.onnx"), image], message)
            for name, message in messages.items()]


def test_every_bad_input_is_one_line_and_exit_2(world, capsys):
    before, made = file_hashes(world["run"]), file_hashes(world["base"] / "made")
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
    assert checked == 169
    assert not (world["base"] / "typo").exists()  # a refused --models, --model-opt or page writes nothing
    assert file_hashes(world["run"]) == before  # no refusal touched the existing run
    assert file_hashes(world["base"] / "made") == made  # nor a damaged run it refused to resume


@pytest.mark.parametrize("entry", sorted(ENTRY))
def test_help_shows_real_defaults_only(entry, capsys):
    with pytest.raises(SystemExit) as exc:
        ENTRY[entry](["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "(default: None)" not in out and "(default: [])" not in out
    if entry.startswith("train"):
        assert "(default: 224)" in " ".join(out.split())  # --img-size

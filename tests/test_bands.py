"""Any number of named channels: multi-band data (bands.txt, TIFF and .npy), names in every
flag, BatchNorm rows that grow as 3V - 2, bands never trained on, and a model extended to new
bands; bad multi-band input is one `error:` line, exit 2, and nothing written is lost."""
import json
import os

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import export
import predict
import test_dw
import train_dw
from conftest import SHARED_DATA, file_hashes
from data import build_dataset, default_combos, describe_root, parse_combo, parse_combo_list
from data.channels import combo_name
from models import create_model
from models.loading import init_from
from models.norm import combo_index, combo_table, num_combos
from models.stems import interpolation
from utils.errors import UserError

BANDS = [("R", 665), ("G", 560), ("B", 490), ("NIR", 842)]
TINY = ["--limit", "24", "--img-size", "16", "--batch-size", "8", "--workers", "0", "--epochs", "1",
        "--backbone", "small"]


def make_band_root(path, bands=BANDS, kind="npy", dtype=np.uint16, per_class=6, size=20):
    """Two classes of noisy 20 px images in ``len(bands)`` bands; class 1 is brighter in the last band."""
    rng = np.random.default_rng(0)
    lines = {s: [] for s in ("train", "val", "test")}
    for label in range(2):
        os.makedirs(path / "images" / f"c{label}", exist_ok=True)
        for i in range(per_class):
            arr = rng.normal(1000, 100, (size, size, len(bands)))
            arr[..., -1] += 800 * label
            suffix = ".npy" if kind == "npy" else ".tif"
            rel = f"images/c{label}/{i}{suffix}"
            arr = arr.astype(dtype)
            np.save(path / rel, arr) if kind == "npy" else tifffile.imwrite(path / rel, arr)
            split = "train" if i < per_class - 2 else ("val" if i == per_class - 2 else "test")
            lines[split].append(f"{rel} {label}")
    for split, ls in lines.items():
        (path / f"{split}.txt").write_text("\n".join(ls) + "\n")
    (path / "bands.txt").write_text("".join(f"{n} {w}\n" for n, w in bands))
    return path


@pytest.fixture(scope="module")
def band_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bands")
    root = make_band_root(base / "data", kind="tif")
    run = base / "run"
    assert train_dw.main(["--data-root", str(root), *TINY, "--out", str(run)]) == 0
    return root, run


def test_a_band_root_reads_its_bands_and_keeps_its_statistics(band_run):
    root, run = band_run
    spec = describe_root(str(root))
    assert spec.bands == ("R", "G", "B", "NIR") and spec.wavelengths == (665, 560, 490, 842)
    assert spec.stats["dtype"] == "uint16" and 1800 > spec.stats["mean"][3] > spec.stats["mean"][0] > 900
    x, _ = build_dataset(spec, "val", 16)[0]
    assert x.shape == (4, 16, 16) and x.dtype == torch.float32
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["bands"]["names"] == ["R", "G", "B", "NIR"] and ckpt["bands"]["mean"] == spec.stats["mean"]
    assert ckpt["config"]["vocab"] == ["R", "G", "B", "NIR"]
    header = (run / "log.csv").read_text().splitlines()[0].split(",")
    assert [h[8:] for h in header if h.startswith("val_acc_")] == default_combos(spec.bands, spec.wavelengths)


def test_evaluate_predict_and_export_take_any_named_subset(band_run, tmp_path, capsys):
    root, run = band_run
    assert test_dw.main(["--checkpoint", str(run), "--workers", "0", "--out", str(tmp_path / "eval")]) == 0
    table = json.loads((tmp_path / "eval" / "results.json").read_text())
    combos = [r["combo"] for r in table["rows"]] if isinstance(table, dict) else [r["combo"] for r in table]
    assert combos == ["all", "RGB", "R", "G", "B", "NIR", "all-R", "all-G", "all-B"]  # all-NIR is RGB
    image = str(root / "images" / "c1" / "5.tif")
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(run), "--channels", "NIR+R", image]) == 0
    from_checkpoint = capsys.readouterr().out
    assert export.main(["--checkpoint", str(run), "--channels", "NIR,R", "--formats", "onnx",
                        "--out", str(tmp_path / "export")]) == 0
    sidecar = json.loads((tmp_path / "export" / "dwg_NIR+R.json").read_text())
    assert sidecar["bands"] == ["R", "G", "B", "NIR"] and sidecar["scale"] == 1.0 and len(sidecar["mean"]) == 2
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(tmp_path / "export" / "dwg_NIR+R.onnx"), image]) == 0
    # the same classes in the same order, probabilities within rounding
    assert [w for w in capsys.readouterr().out.split() if not w.endswith("%")] == \
        [w for w in from_checkpoint.split() if not w.endswith("%")]


def test_channel_names_parse_in_every_written_form():
    bands = ("B02", "B03", "B04", "B08")
    assert parse_combo("B04+B03+B02", bands) == ("B04", "B03", "B02") == parse_combo("B04,B03,B02", bands)
    assert parse_combo("all-B08", bands) == ("B02", "B03", "B04") and parse_combo("all", bands) == bands
    assert parse_combo("BGR") == ("B", "G", "R") and parse_combo("R+G") == ("R", "G")
    assert parse_combo_list("all,B04+B03,B08", bands) == ["all", "B04+B03", "B08"]
    assert combo_name(("B04", "B03")) == "B04+B03" and combo_name(("R", "G")) == "RG"
    for bad, message in [("B05", "unknown channel 'B05'"), ("B04+B04", "repeated"), ("all-X", "unknown channel 'X'"),
                         ("", "empty channel combination")]:
        with pytest.raises(UserError, match=message):
            parse_combo(bad, bands)
    with pytest.raises(UserError, match="listed twice"):
        parse_combo_list("B04+B03,B03+B04+B02,B04+B03", bands)


def test_batchnorm_rows_grow_as_3v_minus_2_and_rgb_keeps_its_seven():
    assert [combo_index(c, "RGB") for c in ["R", "G", "RG", "B", "RB", "GB", "RGB"]] == list(range(7))
    names = [f"B{i:02d}" for i in range(13)]
    table = combo_table(names)
    assert num_combos(names) == 3 * 13 - 2 == len(table)
    assert combo_index(names, names) == len(table) - 1  # the full set is the last row, as before
    assert combo_index(names[:1], names) != combo_index(names[1:2], names)  # each band alone: a row
    assert combo_index(names[:5], names) == combo_index(names[3:8], names)  # five bands: the shared row
    assert combo_index(["B00", "other"], names) == len(table) - 1  # a band it lacks: the full set's
    big = create_model("dwg", 3, backbone="small", vocab=names)
    assert big.combo_seen.shape == (37,)


def test_a_band_never_trained_gets_a_kernel_by_wavelength():
    assert interpolation((490, 560, 665), 560).tolist() == [0, 1, 0]
    assert interpolation((490, 560, 665), 612.5).tolist() == pytest.approx([0, 0.5, 0.5])
    assert interpolation((490, 560, 665), 900).tolist() == [0, 0, 1]  # beyond the end: the nearest
    model = create_model("dwg", 3, backbone="small").eval()
    with torch.no_grad():
        model.stem.fc2.bias.normal_()  # a trained hypernetwork, so the conditioning shows
        model.add_bands({"Y": 560.0, "O": 612.5})
        # a band at G's wavelength is G to the stem
        assert torch.equal(model.stem.kernel(("R", "Y", "B")), model.stem.kernel(("R", "G", "B")))
        out = model(torch.randn(2, 2, 16, 16), ("O", "B"))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="has no wavelength"):
        model(torch.randn(1, 1, 16, 16), ("X",))


def test_an_rgb_model_extended_to_a_fourth_band_computes_what_it_did(tmp_path):
    torch.manual_seed(0)
    rgb = create_model("dwg", 3, backbone="small")
    with torch.no_grad():
        rgb.stem.fc2.weight.normal_(std=0.1)
        for combo in ["RGB", "R", "GB", "RGB"]:  # statistics of their own for some sets
            rgb.train()(torch.randn(4, len(combo), 16, 16) * 2 + 1, tuple(combo))
    ckpt = tmp_path / "rgb.pt"
    torch.save({"model": "dwg", "config": {"backbone": "small"}, "classes": ["a", "b", "c"],
                "state_dict": rgb.state_dict()}, ckpt)
    rgbn = create_model("dwg", 3, backbone="small", vocab=["R", "G", "B", "NIR"], wavelengths=[665, 560, 490, 842])
    init_from(rgbn, str(ckpt), ["a", "b", "c"])
    rgb.eval(), rgbn.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for combo in ["RGB", "R", "G", "B", "BGR"]:
            names = tuple(combo)
            picked = x[:, [list("RGB").index(c) for c in combo]]
            assert torch.allclose(rgbn(picked, names), rgb(picked, names), atol=1e-5), combo
        # the new band: R's embedding (the nearest wavelength), no base kernel of its own yet
        assert torch.equal(rgbn.stem.embed.weight[3], rgb.stem.embed.weight[0])
        assert not rgbn.stem.base[3].any()
        assert torch.isfinite(rgbn(torch.randn(2, 4, 16, 16), ("R", "G", "B", "NIR"))).all()


def test_a_pretrained_rgb_stem_spreads_over_other_bands_by_wavelength(tmp_path):
    torch.manual_seed(0)
    rgb = create_model("plain_zero", 3, backbone="small")
    path = tmp_path / "plain.pt"
    torch.save({"model": "plain_zero", "config": {"backbone": "small"}, "classes": ["a", "b", "c"],
                "state_dict": rgb.state_dict(), "args": {}}, path)
    bands = dict(zip(["B02", "B03", "B04", "B08", "B11"], [490.0, 560.0, 665.0, 842.0, 1610.0]))
    for name in ("plain_zero", "dwg"):
        model = create_model(name, 3, backbone="small", vocab=list(bands), wavelengths=list(bands.values()),
                             pretrained=str(path))
        kernel = model.stem.conv.weight if name == "plain_zero" else model.stem.base.transpose(0, 1)
        red = rgb.stem.conv.weight[:, 0]
        assert torch.allclose(kernel[:, 2], red * 3 / 5, atol=1e-6)  # B04 is R, scaled by 3/V
        assert torch.allclose(kernel[:, 4], red * 3 / 5, atol=1e-6)  # beyond R: R's


def test_the_scripts_train_on_some_bands_and_evaluate_on_unseen_ones(band_run, tmp_path):
    root, _ = band_run
    run = tmp_path / "heldback"
    assert train_dw.main(["--data-root", str(root), *TINY, "--model-opt", "vocab=R,G,B", "--train-channels", "R,G,B",
                          "--out", str(run)]) == 0
    cfg = torch.load(run / "best.pt", weights_only=True)["config"]
    assert cfg["wavelengths"] == [665, 560, 490]
    assert test_dw.main(["--checkpoint", str(run), "--workers", "0", "--combos", "all,NIR,RGB,NIR+G",
                         "--out", str(tmp_path / "eval")]) == 0


def bad_roots(base):
    """Each a multi-band root with one fault, and what its error line says."""
    good = make_band_root(base / "good")
    cases = {}

    def variant(name, edit, message):
        root = base / name
        os.system(f"cp -r {good} {root}")
        edit(root)
        cases[name] = (root, message)

    variant("repeated", lambda r: (r / "bands.txt").write_text("R 665\nG 560\nR 490\nNIR 842\n"),
            "bands.txt:3: band 'R' is named twice (first at line 1)")
    variant("wavelength", lambda r: (r / "bands.txt").write_text("R 665\nG green\nB 490\nNIR 842\n"),
            "bands.txt:2: wavelength 'green' is not a number of nanometres")
    variant("count", lambda r: (r / "bands.txt").write_text("R 665\nG 560\nB 490\n"),
            "holds no 3 bands (bands.txt names that many")
    variant("nan", lambda r: np.save(r / "images/c0/0.npy", np.full((20, 20, 4), np.nan, np.float32)),
            "0.npy: it holds NaN or inf pixels")
    variant("dtypes", lambda r: np.save(r / "images/c0/1.npy", np.ones((20, 20, 4), np.float32)),
            "its pixels are float32, those of")

    variant("text", lambda r: (r / "images/c0/0.npy").write_text("hello"), "0.npy: not a NumPy array")

    def folder(root):
        (root / "bands.txt").unlink()
        (root / "bands.txt").mkdir()
    variant("folder", folder, "cannot read")
    variant("dangling", lambda r: ((r / "bands.txt").unlink(), (r / "bands.txt").symlink_to(r / "gone.txt")),
            "bands.txt: No such file or directory")

    def png16(root):
        Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(root / "images/c0/0.png")
        text = (root / "train.txt").read_text().replace("images/c0/0.npy", "images/c0/0.png")
        (root / "train.txt").write_text(text)
    variant("png16", png16, "0.png: a multi-band root (bands.txt) takes .tif, .tiff, .npy files, not .png")
    return cases


def test_bad_multiband_input_is_one_line_exit_2_and_keeps_the_run(band_run, tmp_path, capsys):
    _, run = band_run
    before = file_hashes(run)
    cases = bad_roots(tmp_path)
    for name, (root, message) in cases.items():
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            train_dw.main(["--data-root", str(root), *TINY, "--out", str(tmp_path / f"out-{name}")])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], (name, err)
        assert not (tmp_path / f"out-{name}").exists()
    # a test image of another dtype than training's, evaluating the finished run
    root = tmp_path / "evaldtype"
    os.system(f"cp -r {band_run[0]} {root}")
    test_image = (root / "test.txt").read_text().split()[0]
    tifffile.imwrite(root / test_image, np.ones((20, 20, 4), np.float32))
    with pytest.raises(SystemExit) as exc:
        test_dw.main(["--checkpoint", str(run), "--data-root", str(root), "--workers", "0",
                      "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "its pixels are float32, the training images' uint16" in err[-1], err
    for vocab, message in [("XYZ", "the data's band 'R' is not one of them"),
                           ("R,G,all", "vocab must be 1 to 256 distinct channel names")]:
        with pytest.raises(SystemExit):
            train_dw.main(["--data-root", str(band_run[0]), *TINY, "--model-opt", f"vocab={vocab}",
                           "--out", str(tmp_path / "v")])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert file_hashes(run) == before


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "eurosat-ms-270")), reason="no EuroSAT sample here")
def test_eurosat_reads_as_13_named_bands():
    spec = describe_root(os.path.join(SHARED_DATA, "eurosat-ms-270"))
    assert len(spec.bands) == 13 and spec.bands[3] == "B04" and spec.wavelengths[3] == 665
    assert default_combos(spec.bands, spec.wavelengths)[:2] == ["all", "B04+B03+B02"]
    x, label = build_dataset(spec, "test", 32, limit=1)[0]
    assert x.shape == (13, 32, 32) and 0 <= label < 10


def test_a_set_seen_in_few_batches_is_evaluated_with_the_full_sets_statistics():
    model = create_model("dwg", 3, backbone="small", vocab=[f"B{i}" for i in range(6)])
    x = torch.randn(4, 6, 16, 16)
    for _ in range(3):
        model.train()(x[:, :5], tuple(model.vocab[:5]))
    model.eval()(x[:, :5], tuple(model.vocab[:5]))
    full = num_combos(model.vocab) - 1
    assert model._combo_bns[0].selector.index == full  # three batches: its row is not trusted yet
    model.combo_seen[combo_index(model.vocab[:5], model.vocab)] = 20
    model(x[:, :5], tuple(model.vocab[:5]))
    assert model._combo_bns[0].selector.index == combo_index(model.vocab[:5], model.vocab)

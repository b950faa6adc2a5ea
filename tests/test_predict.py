"""predict.py: the top classes of image files, as test_dw.py's evaluation would answer."""
import pytest
import torch

import predict
import train_dw
from conftest import make_list_root
from data import build_dataset, describe_root
from data.channels import select
from data.datasets import normalize
from models.loading import load_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_list_root(tmp_path_factory.mktemp("data") / "d", classes=3, per_class=8, size=32)
    out = tmp_path_factory.mktemp("run") / "dwg"
    assert train_dw.main(["--model", "dwg", "--backbone", "small", "--data-root", str(root), "--img-size", "24",
                          "--batch-size", "6", "--workers", "0", "--epochs", "1", "--out", str(out)]) == 0
    return root, out


def test_top1_equals_the_evaluation_of_the_same_image(trained, capsys):
    root, out = trained
    spec = describe_root(str(root))
    _, model = load_model(str(out / "best.pt"), spec.classes)
    model.eval()
    test = build_dataset(spec, "test", 24)
    for combo in ("RGB", "GB", "R"):
        capsys.readouterr()
        paths = [p for p, _ in test.samples]
        assert predict.main(["--checkpoint", str(out / "best.pt"), "--channels", combo, "--top", "2", *paths]) == 0
        printed = capsys.readouterr().out.strip().splitlines()
        assert len(printed) == len(paths)
        with torch.no_grad():
            for (x, _), line in zip(test, printed):
                xc, names = select(normalize(x.unsqueeze(0)), combo)
                expected = spec.classes[int(model(xc, names).argmax())]
                assert line.split(": ", 1)[1].startswith(f"{expected} "), (combo, line)


def test_folders_are_searched_and_bad_files_get_one_line(trained, tmp_path, capsys):
    root, out = trained
    assert predict.main(["--checkpoint", str(out), str(root / "images")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 24
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    for args, message in [([str(broken)], f"cannot read image {broken}"),
                          ([str(tmp_path / "nope.jpg")], "image not found"),
                          (["--channels", "RX", str(broken)], "unknown channel 'X'")]:
        with pytest.raises(SystemExit) as exc:
            predict.main(["--checkpoint", str(out), *args])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_predictions_written_as_csv_match_the_printed_ones(trained, tmp_path, capsys):
    import pandas as pd
    root, out = trained
    csv_path = tmp_path / "pred.csv"
    assert predict.main(["--checkpoint", str(out), "--top", "2", "--out", str(csv_path), str(root / "images")]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if ": " in line]
    table = pd.read_csv(csv_path)
    assert len(table) == 2 * len(printed) == 48 and list(table["rank"][:2]) == [1, 2]
    first = table[table["rank"] == 1].set_index("image")["class"]
    for line in printed:
        path, rest = line.split(": ", 1)
        assert rest.startswith(f"{first[path]} ")
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(SystemExit):  # a folder where the file should go: one line, nothing left behind
        predict.main(["--checkpoint", str(out), "--out", str(tmp_path), str(root / "images")])
    assert "cannot write --out" in capsys.readouterr().err and not list(tmp_path.parent.glob(".tmp-*"))
    with pytest.raises(SystemExit):  # a folder that is not there
        predict.main(["--checkpoint", str(out), "--out", str(tmp_path / "no" / "pred.csv"), str(root / "images")])
    assert f"cannot write {tmp_path / 'no' / 'pred.csv'}" in capsys.readouterr().err

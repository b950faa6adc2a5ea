"""What a run shows and leaves beside its checkpoints: progress lines when stdout is a pipe,
TensorBoard scalars, the training-curve figure."""
import re

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_dw
from conftest import run_script

TINY = ["--data-root", "synthetic", "--limit", "64", "--img-size", "16", "--batch-size", "16",
        "--workers", "0", "--epochs", "2", "--backbone", "small"]


def test_progress_lines_reach_a_pipe(tmp_path):
    proc = run_script("train_dw.py", "--model", "plain_zero", *TINY, "--log-every", "2", "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"epoch \d/2 step \d/4 ", ln)]
    # every second step of each 4-step epoch
    assert [ln.split()[3] for ln in lines] == ["2/4", "4/4", "2/4", "4/4"]
    for ln in lines:
        assert re.search(r"loss \d+\.\d{3}  lr [\d.e-]+  \d+ img/s  data wait \d+%  eta \d+:\d\d:\d\d$", ln), ln
    assert re.search(r"epoch 2/2  loss .* img/s, data wait \d+%; eta 0:00:00\]", proc.stdout)


def test_tensorboard_scalars_and_curves(tmp_path):
    out = tmp_path / "r"
    assert train_dw.main(["--model", "dwg", *TINY, "--val-combos", "RGB,G", "--log-every", "2",
                          "--tensorboard", "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {"train/loss", "train/lr", "train/images_per_s", "train/data_wait", "train/epoch_loss",
                    "train/epoch_distill", "train/epoch_acc", "val/acc", "val/acc_RGB", "val/acc_G"}  # a sandwich
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]
    assert [e.step for e in events.Scalars("val/acc_G")] == [4, 8]
    assert (out / "curves.png").stat().st_size > 5000

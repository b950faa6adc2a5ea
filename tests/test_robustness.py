"""Runs that survive: resume after a kill, signals, bad input, distributed evaluation."""
import errno
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import ROOT, run_script, trained_run
from utils.checkpoint import save_atomic
from utils.errors import UserError

RUN = ["--model", "plain_zero", "--backbone", "small", "--data-root", "synthetic", "--limit", "192",
       "--img-size", "24", "--batch-size", "16", "--workers", "0", "--seed", "3", "--deterministic"]


def _wait_for_epochs(out, n, proc, timeout=120):
    """Until epoch ``n`` is logged and checkpointed (the log line is written first)."""
    start, log = time.time(), out / "log.csv"
    while time.time() - start < timeout:
        if log.exists() and len(log.read_text().splitlines()) >= n + 1 and (out / "last.pt").exists():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise TimeoutError(out)


def _log_without_times(path):
    """The log's rows without its wall times (seconds, train_seconds)."""
    lines = [line.split(",") for line in path.read_text().splitlines()]
    keep = [i for i, name in enumerate(lines[0]) if name not in ("seconds", "train_seconds")]
    return [[row[i] for i in keep] for row in lines]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    return trained_run(tmp_path_factory, "ref", *RUN, "--epochs", "3")


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, reference_run):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train_dw.py", *RUN, "--epochs", "3", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_epochs(out, 1, proc)
    proc.send_signal(signal.SIGKILL)  # in epoch 2: last.pt holds epoch 1
    proc.wait()
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 1
    r = run_script("train_dw.py", "--resume", str(out))
    assert r.returncode == 0, r.stderr
    final, ref = (torch.load(p / "last.pt", weights_only=False) for p in (out, reference_run))
    assert final["epoch"] == ref["epoch"] == 3
    for k, v in ref["state_dict"].items():
        assert torch.equal(final["state_dict"][k], v), k
    assert _log_without_times(out / "log.csv") == _log_without_times(reference_run / "log.csv")


def test_sigint_saves_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train_dw.py", *RUN, "--epochs", "4", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_epochs(out, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"--resume {out}" in err and "Traceback" not in err
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["step"]) >= (1, 0)
    r = run_script("train_dw.py", "--resume", str(out))
    assert r.returncode == 0, r.stderr
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 4


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"a": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"a": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"a": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"a": 1}, path)

    def full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match="cannot write .*last.pt: No space left on device; the previous file is kept"):
        save_atomic({"a": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"a": 1} and os.listdir(tmp_path) == ["last.pt"]


def _expect_error(r, pattern):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert pattern in lines[0], lines[0]


def test_non_finite_loss_stops_with_epoch_and_step(tmp_path):
    r = run_script("train_dw.py", *RUN, "--epochs", "1", "--lr", "1e30", "--warmup-epochs", "0",
                   "--out", str(tmp_path / "r"))
    _expect_error(r, "non-finite loss")
    assert "at epoch 1 step" in r.stderr
    assert not (tmp_path / "r" / "last.pt").exists()


def test_bad_input_errors(tmp_path, reference_run, list_root):
    ckpt = reference_run / "best.pt"
    cases = [
        (["train_dw.py", "--data-root", str(tmp_path / "none"), "--out", str(tmp_path / "a")], "data root not found"),
        (["train_dw.py", *RUN, "--out", str(reference_run)], "already holds a run"),
        (["train_dw.py", "--resume", str(reference_run), "--model", "dwg"], "is a checkpoint of 'plain_zero'"),
        (["train_dw.py", *RUN, "--train-channels", "RR", "--out", str(tmp_path / "b")], "channel 'R' repeated"),
        (["test_dw.py", "--checkpoint", str(ckpt), "--data-root", "synthetic", "--combos", "RGB,RX"],
         "unknown channel 'X'"),
        (["test_dw.py", "--checkpoint", str(ckpt), "--data-root", "synthetic", "--combos", "RGB,"],
         "empty channel combination"),
        (["test_dw.py", "--checkpoint", str(ckpt), "--data-root", str(list_root)], "trained on 6 classes"),
        (["test_dw.py", "--checkpoint", str(tmp_path / "no.pt"), "--data-root", "synthetic"], "checkpoint not found"),
    ]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    cases.append((["test_dw.py", "--checkpoint", str(truncated), "--data-root", "synthetic"], "truncated or corrupt"))
    # Separate processes, as a user runs them; a few at once, since each spends its time importing.
    with ThreadPoolExecutor(4) as pool:
        for (_, pattern), r in zip(cases, pool.map(lambda c: run_script(*c[0]), cases)):
            _expect_error(r, pattern)
    assert (reference_run / "last.pt").stat().st_size > 5000  # refusals left the run untouched


def test_missing_image_in_a_training_run(tmp_path, list_root):
    os.remove(list_root / "images" / "n00000001" / "n00000001_2.JPEG")
    r = run_script("train_dw.py", "--data-root", str(list_root), "--out", str(tmp_path / "r"), "--workers", "0")
    _expect_error(r, "missing image")
    assert "train.txt:7" in r.stderr


def test_corrupt_image_inside_a_worker(tmp_path, list_root):
    (list_root / "images" / "n00000001" / "n00000001_2.JPEG").write_bytes(b"")
    (tmp_path / "r").mkdir()  # a folder that was there before: what the run wrote stays after it fails
    r = run_script("train_dw.py", "--data-root", str(list_root), "--out", str(tmp_path / "r"), "--workers", "1",
                   "--img-size", "16", "--batch-size", "4", "--backbone", "small", "--epochs", "1")
    _expect_error(r, "cannot read image")
    assert "n00000001_2.JPEG" in r.stderr
    # the header-only log.csv left behind is no run: the same command tries again
    r = run_script("train_dw.py", "--data-root", str(list_root), "--out", str(tmp_path / "r"), "--workers", "0",
                   "--img-size", "16", "--batch-size", "4", "--backbone", "small", "--epochs", "1")
    _expect_error(r, "cannot read image")
    assert "holds no epoch and no checkpoint" in r.stdout


def test_two_process_gloo_evaluation_matches_single_process(tmp_path, reference_run):
    common = ["--checkpoint", str(reference_run / "best.pt"), "--data-root", "synthetic", "--limit", "101",
              "--workers", "0", "--device", "cpu", "--combos", "RGB,G"]
    single = run_script("test_dw.py", *common, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    # the shards of decoding on the device add up to the same results as well
    two = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "test_dw.py",
                     *common, "--decode", "device", "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    a, b = ((tmp_path / d / "results.json").read_text() for d in ("one", "two"))
    assert a.replace(str(tmp_path / "one"), "") == b.replace(str(tmp_path / "two"), "")
    assert '"images": 101' in b


def test_two_process_training_runs(tmp_path):
    r = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train_dw.py",
                   *RUN, "--epochs", "1", "--out", str(tmp_path / "ddp"))
    assert r.returncode == 0, r.stderr
    assert "x2" in r.stdout and (tmp_path / "ddp" / "best.pt").exists()
    # the LR rule, printed at the start: --batch-size is per process, --lr is used as given
    assert "global batch 32 (2 processes x 16), peak LR 0.1 as given (not scaled with the global batch)" \
        in r.stdout


def test_resumed_log_drops_rows_past_the_checkpoint(tmp_path):
    from utils.run_folder import start_log
    log = tmp_path / "log.csv"
    log.write_text("epoch,val_acc\n1,0.1\n2,0.2\n3,0.3\n")
    start_log(str(log), ["epoch", "val_acc"], 2)
    assert log.read_text().splitlines() == ["epoch,val_acc", "1,0.1", "2,0.2"]
    start_log(str(log), ["epoch", "val_acc"], 0)
    assert log.read_text().splitlines() == ["epoch,val_acc"]
    log.write_text("epoch,val_acc\n1,0.1\n\n2,0.2\n3,0.3\n\n")  # blank lines: an editor, a kill mid-line
    start_log(str(log), ["epoch", "val_acc"], 3)
    assert log.read_text().splitlines() == ["epoch,val_acc", "1,0.1", "2,0.2", "3,0.3"]
    # rows that are no whole epoch's: a cut one, words, a superscript epoch, an infinite number
    log.write_text("epoch,val_acc\n1,0.1\n2,\n2,abc\n\u00b2,0.2\n3,inf\n3,0.3,9\n3\n0,0.1\n")
    start_log(str(log), ["epoch", "val_acc"], 3)
    assert log.read_text().splitlines() == ["epoch,val_acc", "1,0.1"]


def test_an_unreadable_log_is_one_line_and_stays(tmp_path):
    from utils.run_folder import start_log
    log = tmp_path / "log.csv"
    log.write_text("epoch,val_acc\n1," + "9" * 200_000 + "\n")  # a field beyond csv's limit
    with pytest.raises(UserError, match="cannot read the run's log .*log.csv: field larger than field limit"):
        start_log(str(log), ["epoch", "val_acc"], 1)
    assert len(log.read_text()) > 200_000
    log.unlink()
    log.mkdir()
    with pytest.raises(UserError, match="log.csv is a folder where the run's log goes"):
        start_log(str(log), ["epoch", "val_acc"], 0)
    assert log.is_dir() and not list(log.iterdir())


def test_results_refuse_a_run_folder_of_another_recipe(reference_run):
    """Every flag that can change what a run learns, given or left at its default, must be the
    checkpoint's; flags that say only where and how fast it runs may differ."""
    import argparse

    from experiments.results.jobs import status
    from experiments.results.runs import Job

    def run_finished(out, script, flags):
        args = argparse.Namespace(data_root=flags[flags.index("--data-root") + 1])
        return status(args, Job("part", "row", 0, 3, script, tuple(flags), str(out))) == "finished"
    flags = [*RUN, "--epochs", "3"]
    assert run_finished(reference_run, "train_dw.py", flags)
    assert run_finished(reference_run, "train_dw.py", [*flags, "--workers", "2", "--log-every", "7", "--device", "cpu"])
    refused = {"--epochs 3, not 6": [*flags, "--epochs", "6"],
               "--limit 192, not None": [f for f in flags if f not in ("--limit", "192")],  # the default: all images
               "--lr 0.1, not 0.05": [*flags, "--lr", "0.05"],
               "--model-opt [], not [('combo_bn', True)]": [*flags, "--model-opt", "combo_bn=True"],
               "--val-combos RGB,RG,RB,GB,R,G,B, not RGB": [*flags, "--val-combos", "RGB"]}
    for message, wanted in refused.items():
        with pytest.raises(UserError, match=re.escape(f"last.pt was trained with {message}; remove that folder")):
            run_finished(reference_run, "train_dw.py", wanted)


def test_a_damaged_evaluation_is_evaluated_again(tmp_path):
    """An evaluation is reused only when its results.json reads as one, with its fields."""
    from experiments.results.jobs import evaluated
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights")
    results = tmp_path / "eval" / "results.json"
    results.parent.mkdir()
    for text, reused in (('[{"checkpoint": "%s"}]' % ckpt, True), ('[{"checkpoint": "%s"' % ckpt, False),
                         ('{"checkpoint": 1}', False), ('[{"combo": "RGB"}]', False)):
        results.write_text(text)
        os.utime(results, (time.time() + 5, time.time() + 5))  # written after the checkpoint
        assert evaluated(str(results), str(ckpt), None) == reused, text


def test_resume_with_more_epochs_extends_a_finished_run(tmp_path):
    out = tmp_path / "run"
    assert run_script("train_dw.py", *RUN, "--epochs", "1", "--out", str(out)).returncode == 0
    before = torch.load(out / "last.pt", weights_only=False)
    r = run_script("train_dw.py", "--resume", str(out), "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert "with --epochs 2 (was 1)" in r.stdout
    after = torch.load(out / "last.pt", weights_only=False)
    assert after["epoch"] == 2
    # the stretched schedule's LR, not the finished one's 0, trains the new epoch
    weights = [k for k in before["state_dict"] if k.endswith("weight")]
    assert any(not torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in weights)
    assert len((out / "log.csv").read_text().splitlines()) == 3


class _Payload:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_carries_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "best.pt"
    torch.save({"model": "dwg", "config": {}, "classes": ["a"], "state_dict": {}, "x": _Payload(str(marker))}, path)
    r = run_script("test_dw.py", "--checkpoint", str(path), "--data-root", "synthetic")
    assert r.returncode == 2 and r.stderr.startswith("error: refusing to load") and "Traceback" not in r.stderr
    assert not marker.exists()


def test_saturation_is_the_first_budget_whose_doubling_gains_under_a_point():
    from experiments.results.tables import saturation
    assert saturation({6: 0.50, 12: 0.60, 24: 0.655, 48: 0.66}) == 24
    assert saturation({6: 0.50, 12: 0.505}) == 6
    assert saturation({6: 0.50, 12: 0.60, 24: 0.70}) is None
    assert saturation({6: 0.50, 10: 0.50}) is None  # not a doubling


def test_results_stop_launching_runs_after_a_failed_one():
    from experiments.results.jobs import in_parallel, sh
    with pytest.raises(UserError, match="exited with status 3"):
        sh("-c", "import sys; sys.exit(3)")
    started = []

    def task(name, threads=None):
        started.append(name)
        if name == "fails":
            sh("-c", "import sys; sys.exit(3)")
    with pytest.raises(UserError, match="the same command resumes the rest"):
        in_parallel(1, [lambda threads, n=n: task(n, threads) for n in ("first", "fails", "never", "nor")])
    assert started == ["first", "fails"]

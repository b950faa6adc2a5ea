"""A stop sent the way a shell or a cluster sends it: to the whole process group, loader workers
included. The training process finishes its step, saves last.pt, says so once and exits 128 +
the signal; the workers leave the decision to it."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, run_script


def _start(out, *extra):
    args = [sys.executable, "train_dw.py", "--model", "dwg", "--backbone", "small", "--data-root", "synthetic",
            "--limit", "400", "--img-size", "16", "--batch-size", "8", "--epochs", "20", "--workers", "1",
            "--log-every", "1", "--out", str(out), *extra]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_saves_last_pt_once(tmp_path, signum):
    out = tmp_path / "run"
    proc = _start(out)
    deadline = time.time() + 120
    for line in proc.stdout:  # a few steps in: the loader's worker is busy prefetching
        if " step 5/" in line or time.time() > deadline:
            break
    os.killpg(proc.pid, signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    assert stderr.count(f"{signal.Signals(signum).name}: finishing this step") == 1, stderr
    assert "DataLoader worker" not in stderr and "Traceback" not in stderr, stderr
    assert "stopped in epoch 1" in stderr and (out / "last.pt").exists()
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["epoch"] == 0 and saved["step"] >= 1
    r = run_script("train_dw.py", "--resume", str(out), "--epochs", "1")  # the rest of epoch 1
    assert r.returncode == 0, r.stderr
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1


def test_the_results_driver_passes_a_stop_to_its_run_and_waits(tmp_path):
    """SIGTERM to the driver's process group: the run it trains hears it once, saves last.pt, the
    driver waits for it and exits 143; nothing is left running; the same command resumes."""
    from tests.conftest import make_list_root
    root = make_list_root(tmp_path / "data", classes=3, per_class=30, size=24)
    args = [sys.executable, "-m", "experiments.results", "--part", "task1-lr", "--lrs", "0.1", "--epochs", "40",
            "--img-size", "16", "--batch-size", "2", "--workers", "1", "--data-root", str(root),
            "--out", str(tmp_path / "runs")]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    for line in proc.stdout:
        if "epoch 2/40" in line or time.time() > deadline:
            break
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.count("SIGTERM: finishing this step") == 1 and "passed to the running scripts" in stderr, stderr
    run = tmp_path / "runs" / "task1" / "plain_zero-e40-s0-lr0.1"
    saved = torch.load(run / "last.pt", weights_only=True)
    assert 1 <= saved["epoch"] < 40
    ps = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True)
    assert ps.stdout == "", "a training run outlived the driver"


def test_a_process_exits_with_its_loader_workers_still_up():
    # After an error mid-epoch the loader's iterator can outlive main(); multiprocessing's exit
    # hook would then send SIGTERM, which the workers ignore, and wait for them forever.
    script = ("import torch.utils.data as d; from data.loaders import ignore_stop_signals\n"
              "it = iter(d.DataLoader(list(range(64)), batch_size=4, num_workers=1, persistent_workers=True,"
              " worker_init_fn=ignore_stop_signals))\n"
              "next(it)\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr

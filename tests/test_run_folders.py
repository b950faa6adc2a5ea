"""A run folder belongs to one run: it is written only where the command line says, by one
process at a time; a resume is exact or refused; best.pt and last.pt agree."""
import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
from test_robustness import RUN, _wait_for_epochs

from conftest import ROOT, file_hashes, run_script, trained_run
from utils.checkpoint import save_atomic
from utils.errors import UserError
from utils.run_folder import reconcile_best


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return trained_run(tmp_path_factory, "fin", *RUN, "--epochs", "1")


def test_resume_writes_into_the_folder_named_not_the_one_stored(tmp_path, finished):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    before = file_hashes(finished)
    r = run_script("train_dw.py", "--resume", str(copy), "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert file_hashes(finished) == before  # the original run is untouched
    ckpt = torch.load(copy / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["args"]["out"] == str(copy)
    assert len((copy / "log.csv").read_text().splitlines()) == 3


def test_resume_from_inside_the_run_folder_continues_there(tmp_path, finished):
    """``--resume last.pt`` typed inside the run folder: the run continues in that folder."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_dw.py"), "--resume", "last.pt", "--epochs", "2"],
                       cwd=run, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 2
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == []  # no runs/<model> inside it


def test_resume_after_the_list_file_changed_is_refused(tmp_path):
    from conftest import make_list_root
    root = make_list_root(tmp_path / "data", classes=3, per_class=8, size=24)
    run = tmp_path / "run"
    r = run_script("train_dw.py", "--model", "plain_zero", "--backbone", "small", "--data-root", str(root),
                   "--img-size", "16", "--batch-size", "4", "--workers", "0", "--epochs", "1", "--out", str(run))
    assert r.returncode == 0, r.stderr
    before = file_hashes(run)
    lines = (root / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("".join(f"{x}\n" for x in lines[:-3]))  # three images fewer, same classes
    r = run_script("train_dw.py", "--resume", str(run), "--epochs", "2")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "train.txt changed since the run started" in r.stderr and "15 images" in r.stderr, r.stderr
    assert file_hashes(run) == before


def test_resume_into_another_run_needs_overwrite(tmp_path, finished):
    other = tmp_path / "other"
    assert run_script("train_dw.py", *RUN, "--epochs", "1", "--out", str(other)).returncode == 0
    before = file_hashes(other)
    r = run_script("train_dw.py", "--resume", str(finished), "--epochs", "2", "--out", str(other))
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert file_hashes(other) == before
    fresh = tmp_path / "fresh"  # an empty folder is fine: the log so far comes along
    r = run_script("train_dw.py", "--resume", str(finished), "--epochs", "2", "--out", str(fresh))
    assert r.returncode == 0, r.stderr
    assert len((fresh / "log.csv").read_text().splitlines()) == 3


def test_overwrite_that_fails_before_its_first_checkpoint_leaves_the_old_run(tmp_path, finished):
    """--overwrite replaces a run only once the new run has a checkpoint: a non-finite loss in its
    first epoch, or a kill before its first save, leaves the old run's files as they were."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = file_hashes(run)
    r = run_script("train_dw.py", *RUN, "--epochs", "1", "--lr", "1e30", "--warmup-epochs", "0",
                   "--out", str(run), "--overwrite")
    assert r.returncode == 2 and "non-finite loss" in r.stderr
    assert file_hashes(run) == before
    # killed (SIGKILL: nothing runs on the way out) inside its first epoch
    proc = subprocess.Popen([sys.executable, "train_dw.py", *RUN, "--epochs", "100", "--limit", "4000",
                             "--out", str(run), "--overwrite"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "step" in line:  # a training step is running: the old files are set aside by now
            break
    proc.kill()
    proc.wait()
    assert sorted(os.listdir(run / ".previous-run")) == sorted(p for p in before if p != "lock")
    # the next --overwrite that fails puts the first run back, not the killed attempt's files
    r = run_script("train_dw.py", *RUN, "--epochs", "1", "--lr", "1e30", "--warmup-epochs", "0",
                   "--out", str(run), "--overwrite")
    assert r.returncode == 2 and file_hashes(run) == before
    # and one that succeeds replaces it, keeping nothing of it: its evaluations and exports neither
    for derived in ("eval-test", "export"):
        (run / derived).mkdir()
        (run / derived / "results.json").write_text("{}")
    r = run_script("train_dw.py", *RUN, "--epochs", "1", "--seed", "4", "--out", str(run), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert not (run / ".previous-run").exists()
    assert not (run / "eval-test").exists() and not (run / "export").exists()
    assert torch.load(run / "last.pt", weights_only=False)["args"]["seed"] == 4


def test_recipe_flags_on_resume_are_refused_safe_ones_applied(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = file_hashes(run)
    r = run_script("train_dw.py", "--resume", str(run), "--lr", "0.5", "--img-size", "32")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--img-size, --lr cannot change" in r.stderr
    assert file_hashes(run) == before
    r = run_script("train_dw.py", "--resume", str(run), "--lr", "0.1", "--epochs", "2", "--workers", "1")
    assert r.returncode == 0, r.stderr  # --lr 0.1 is the run's own value
    assert "with --epochs 2 (was 1)" in r.stdout and "with --workers 1 (was 0)" in r.stdout


def test_a_run_from_before_the_sandwich_options_resumes_with_the_recipe_it_had(tmp_path, finished):
    """A checkpoint written before --sandwich-fraction/-every existed trained with the full
    sandwich: resumed, it keeps that, whatever today's defaults are."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run / name, weights_only=False)
        for key in ("sandwich_fraction", "sandwich_every"):
            del ckpt["args"][key]
        save_atomic(ckpt, run / name)
    r = run_script("train_dw.py", "--resume", str(run), "--epochs", "2")
    assert r.returncode == 0, r.stderr
    args = torch.load(run / "last.pt", weights_only=False)["args"]
    assert (args["sandwich_fraction"], args["sandwich_every"]) == (1.0, 1)


def test_a_resumed_run_keeps_the_weights_it_started_from_in_its_recipe(tmp_path, finished):
    """--pretrained and --init-from are read once, when a run starts; a resume neither reads them
    again (the file may be gone) nor forgets them, so that the driver can tell such a run apart."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    ckpt = torch.load(run / "last.pt", weights_only=False)
    ckpt["args"].update(pretrained=str(tmp_path / "gone.pth"), init_from=str(tmp_path / "gone.pt"))
    save_atomic(ckpt, run / "last.pt")
    r = run_script("train_dw.py", "--resume", str(run), "--epochs", "2")
    assert r.returncode == 0, r.stderr
    args = torch.load(run / "last.pt", weights_only=False)["args"]
    assert (args["pretrained"], args["init_from"]) == (str(tmp_path / "gone.pth"), str(tmp_path / "gone.pt"))


def test_a_live_lock_refuses_a_stale_one_is_taken_over(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (run / "lock").write_text(f"{sleeper.pid} {os.uname().nodename}")
        before = file_hashes(run)
        r = run_script("train_dw.py", "--resume", str(run), "--epochs", "2")
        assert r.returncode == 2 and f"is in use by process {sleeper.pid}" in r.stderr
        assert file_hashes(run) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    (run / ".tmp-abc.pt").write_bytes(b"half a checkpoint")  # a save killed midway
    r = run_script("train_dw.py", "--resume", str(run), "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert f"taking over the lock of process {sleeper.pid}" in r.stdout
    assert "removed 1 temporary file" in r.stdout
    assert not (run / "lock").exists() and not (run / ".tmp-abc.pt").exists()


def test_two_trainings_into_one_folder(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "train_dw.py", *RUN, "--epochs", "100", "--out", str(out)],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_epochs(out, 1, first)
        r = run_script("train_dw.py", *RUN, "--epochs", "3", "--out", str(out), "--overwrite")
        assert r.returncode == 2 and f"is in use by process {first.pid}" in r.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 143 and not (out / "lock").exists()
    epochs = [int(line.split(",")[0]) for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(1, len(epochs) + 1))  # one run's rows, none of another


@pytest.fixture(scope="module")
def sandwich_reference(tmp_path_factory):
    return trained_run(tmp_path_factory, "ref", *SANDWICH, "--epochs", "2")


# The sandwich draws channels (on every other step, from half the batch), the loader augments in a
# worker process: all must resume exactly. The stop comes after 13 steps, between two sandwiches.
SANDWICH = [*RUN[:RUN.index("--workers")], "--workers", "1", *RUN[RUN.index("--workers") + 2:],
            "--sandwich-every", "2", "--sandwich-fraction", "0.5"]
SANDWICH[SANDWICH.index("plain_zero")] = "dwg"


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stop_inside_an_epoch_resumes_bit_exactly(tmp_path, sandwich_reference, sig, code):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train_dw.py", *SANDWICH, "--epochs", "2", "--log-every", "1",
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:  # a step of epoch 2 is done
        if line.startswith("epoch 2/2 step 1/"):
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    stopped = torch.load(out / "last.pt", weights_only=False)
    assert stopped["epoch"] == 1 and stopped["step"] > 0, "the stop should come inside epoch 2"
    r = run_script("train_dw.py", "--resume", str(out))
    assert r.returncode == 0, r.stderr
    final, ref = (torch.load(p / "last.pt", weights_only=False) for p in (out, sandwich_reference))
    for k, v in ref["state_dict"].items():
        assert torch.equal(final["state_dict"][k], v), k
    # the log's training loss and accuracy of the stopped epoch cover its steps before the stop too
    logs = [pd.read_csv(p / "log.csv") for p in (out, sandwich_reference)]
    cols = ["train_loss", "train_acc", "train_distill"]
    pd.testing.assert_frame_equal(logs[0][cols], logs[1][cols])


def test_best_and_last_agree_after_a_kill_between_the_two_writes(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    last = torch.load(run / "last.pt", weights_only=False)
    assert last["best_epoch"] == last["epoch"] == 1
    stale = {**last, "epoch": 0, "best_epoch": None}  # what best.pt held before the kill: an earlier epoch
    save_atomic(stale, run / "best.pt")
    reconcile_best(str(run))
    assert (run / "best.pt").read_bytes() == (run / "last.pt").read_bytes()


def test_a_lock_that_names_no_process_is_taken_over_once_old(tmp_path):
    from utils.run_folder import RunLock
    lock = tmp_path / "lock"
    lock.write_text("")  # what a full disk left when the lock was made
    with pytest.raises(UserError):  # fresh: perhaps a writer between creating and writing it
        RunLock(str(tmp_path)).acquire()
    os.utime(lock, (0, 0))
    held = RunLock(str(tmp_path)).acquire()
    assert lock.read_text().split()[0] == str(os.getpid())
    held.release()
    assert not lock.exists()


def test_a_full_disk_while_locking_leaves_no_lock(tmp_path, monkeypatch):
    import errno

    from utils import run_folder

    class Full:
        def __init__(self, fd, mode):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(run_folder.os, "fdopen", Full)
    with pytest.raises(UserError, match="cannot write the lock .*No space left on device"):
        run_folder.RunLock(str(tmp_path)).acquire()
    assert not (tmp_path / "lock").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_other_files_is_refused_and_left_alone(tmp_path, overwrite):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("config.json", "curves.png", "notes.txt"):
        (out / name).write_text(name)
    before = file_hashes(out)
    r = run_script("train_dw.py", *RUN, "--epochs", "1", "--out", str(out), *(["--overwrite"] if overwrite else []))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: --out {out} holds files that are no run's (config.json, curves.png, notes.txt); a run never writes "
        "over them (--overwrite replaces a run, not a folder): choose another --out"]
    assert file_hashes(out) == before and sorted(os.listdir(out)) == ["config.json", "curves.png", "notes.txt"]


def test_a_file_named_like_the_set_aside_folder_is_refused(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / ".previous-run").write_text("mine")
    before = file_hashes(run)
    r = run_script("train_dw.py", *RUN, "--epochs", "1", "--out", str(run), "--overwrite")
    assert r.returncode == 2 and "holds files that are no run's (.previous-run)" in r.stderr, r.stderr
    assert file_hashes(run) == before


def test_a_run_folder_given_for_evaluation_means_its_best_checkpoint(tmp_path):
    from models.loading import best_of
    (tmp_path / "last.pt").write_bytes(b"")
    assert best_of(str(tmp_path)) == str(tmp_path)  # no best.pt yet: load_checkpoint reads last.pt
    (tmp_path / "best.pt").write_bytes(b"")
    assert best_of(str(tmp_path)) == str(tmp_path / "best.pt")
    assert best_of(str(tmp_path / "last.pt")) == str(tmp_path / "last.pt")


def test_a_log_that_holds_more_than_a_header_is_never_taken_for_a_leftover(tmp_path):
    """A folder with only a log.csv is a failed first epoch's leftover only if that log is our header
    alone; a user's log with a first line beyond any read buffer is refused, byte for byte kept."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "log.csv").write_text("epoch,lr,train_loss,train_acc,val_acc," + "x" * 70_000 + "\n1,0.1,2,0.5,0.5,1\n")
    before = file_hashes(out)
    r = run_script("train_dw.py", *RUN, "--epochs", "1", "--out", str(out))
    assert r.returncode == 2 and "already holds a run (log.csv)" in r.stderr, r.stderr
    assert file_hashes(out) == before


def test_a_log_from_before_a_column_was_added_keeps_its_epochs_on_resume(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    old = pd.read_csv(run / "log.csv").drop(columns=["train_distill"])
    old.to_csv(run / "log.csv", index=False)
    r = run_script("train_dw.py", "--resume", str(run), "--epochs", "2")
    assert r.returncode == 0, r.stderr
    assert "the log gains the column(s) train_distill" in r.stdout
    log = pd.read_csv(run / "log.csv")
    assert list(log.epoch) == [1, 2] and log.val_acc[0] == old.val_acc[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA takes --device cuda")
def test_device_cuda_without_cuda_is_one_line(capsys):
    import predict
    import test_rrdb
    import train_rrdb
    for main, argv in ((train_rrdb.main, ["--data-root", "synthetic", "--limit", "16", "--epochs", "1"]),
                       (test_rrdb.main, ["--checkpoints", "none.pt"]),
                       (predict.main, ["--checkpoint", "none.pt", "x.png"])):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--device", "cuda"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and "--device cuda: this machine has no CUDA device" in err[0], err

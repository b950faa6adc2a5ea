import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

# Under pytest-xdist the workers share the cores: each (and every script it runs) gets its share,
# since oversubscribed OpenMP threads spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")  # the real images and lists beside a checkout, where present
sys.path.insert(0, ROOT)


def make_list_root(path, classes=3, per_class=6, size=24, crlf=False):
    """A tiny dataset in the mini-ImageNet list format, with real JPEG files."""
    rng = np.random.default_rng(0)
    eol = "\r\n" if crlf else "\n"
    lines = {s: [] for s in ("train", "val", "test")}
    for label in range(classes):
        wnid = f"n{label:08d}"
        os.makedirs(path / "images" / wnid, exist_ok=True)
        for i in range(per_class):
            colour = np.zeros(3)
            colour[label % 3] = 200
            arr = np.clip(rng.normal(colour, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            rel = f"images/{wnid}/{wnid}_{i}.JPEG"
            Image.fromarray(arr).save(path / rel, "JPEG")
            split = "train" if i < per_class - 2 else ("val" if i == per_class - 2 else "test")
            lines[split].append(f"{rel} {label}")
    for split, ls in lines.items():
        (path / f"{split}.txt").write_bytes((eol.join(ls) + eol).encode())
    return path


@pytest.fixture
def list_root(tmp_path):
    return make_list_root(tmp_path / "data")


def run_script(*args, timeout=300):
    """Run an entry script as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def trained_run(tmp_path_factory, name, *args):
    """A finished ``train_dw.py`` run with ``args``, in a fresh folder; -> the run folder."""
    out = tmp_path_factory.mktemp(name) / "run"
    r = run_script("train_dw.py", *args, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def file_hashes(folder):
    """SHA-256 of every file under ``folder``, by name: to show a refusal changed nothing."""
    return {p: hashlib.sha256(open(os.path.join(d, p), "rb").read()).hexdigest()
            for d, _, files in os.walk(folder) for p in files}


REPO_STATE = pytest.StashKey()


def _repository_state():
    """``git status`` and the bytes of every file it lists; None outside a git checkout."""
    r = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode:
        return None
    listed = [line[3:].split(" -> ")[-1] for line in r.stdout.splitlines()]
    return {p: _digest(os.path.join(ROOT, p)) for p in listed}


def _digest(path):
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def pytest_sessionstart(session):
    session.config.stash[REPO_STATE] = _repository_state()


def pytest_sessionfinish(session, exitstatus):
    """No test, nor any script a test runs, writes into the repository (outputs go under runs/,
    which git ignores, or under pytest's temporary folders)."""
    before, after = session.config.stash.get(REPO_STATE, None), _repository_state()
    if before is None or after is None or before == after:
        return
    changed = sorted(p for p in {*before, *after} if before.get(p) != after.get(p))
    print(f"\nthe test suite changed files of the repository: {', '.join(changed)}", file=sys.stderr)
    session.exitstatus = 1


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A script called in-process (the bench sets its --threads) must not change the threads, and
    so the arithmetic, of the tests that run after it on the same worker."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


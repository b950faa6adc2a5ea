"""Imports point down: utils/ is the floor, data/ stands on it, models/ on both, and none of them
imports an entry script, the engine or the training run."""
import ast
import os

from conftest import ROOT

BELOW = {"utils": {"utils"}, "data": {"utils", "data"}, "models": {"utils", "data", "models"}}
PROJECT = {"utils", "data", "models", "losses", "engine", "train", "train_dw", "train_rrdb", "test_dw", "test_rrdb",
           "predict", "export", "bench", "gpu_check", "experiments"}


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_every_import_points_down():
    wrong = []
    for package, allowed in BELOW.items():
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith(".py"):
                path = os.path.join(ROOT, package, name)
                wrong += [f"{package}/{name} imports {m}" for m in _imports(path) if m in PROJECT - allowed]
    assert not wrong, wrong


def test_the_run_and_the_experiments_read_in_short_functions():
    """The training run and the experiment runner stay a sequence of named steps: no function of
    train.py or experiments/ over 60 lines."""
    paths = [os.path.join(ROOT, "train.py")] + [os.path.join(folder, name)
                                                for folder, _, names in os.walk(os.path.join(ROOT, "experiments"))
                                                for name in names if name.endswith(".py")]
    long = [f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in paths for node in ast.walk(ast.parse(open(path).read()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert len(paths) > 2 and not long, long


def test_ruff_finds_nothing():
    """The project's linter configuration (pyproject.toml) holds for every file."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr

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

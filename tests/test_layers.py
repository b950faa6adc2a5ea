"""Imports point down: utils/ is the floor, data/ stands on it, models/ on both, the optimizer, the
engine and the flags on them, and none of them imports an entry script or the training run. Every
function fits on a screen, and the linter's configuration holds."""
import ast
import os

from conftest import ROOT

BELOW = {"utils": {"utils"}, "data": {"utils", "data"}, "models": {"utils", "data", "models"},
         "optim.py": {"utils", "data", "models"}, "engine.py": {"utils", "data", "models"},
         "flags.py": {"utils", "data", "models", "optim"}}
PROJECT = {"utils", "data", "models", "losses", "engine", "train", "flags", "optim", "train_dw", "train_rrdb",
           "test_dw", "test_rrdb", "predict", "export", "bench", "gpu_check", "experiments"}
MAX_LINES, MAX_PARAMETERS = 60, 10


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def _files(part):
    path = os.path.join(ROOT, part)
    if part.endswith(".py"):
        return [path]
    return [os.path.join(path, name) for name in sorted(os.listdir(path)) if name.endswith(".py")]


def test_every_import_points_down():
    wrong = []
    for part, allowed in BELOW.items():
        for path in _files(part):
            own = {part.removesuffix(".py")}
            wrong += [f"{os.path.relpath(path, ROOT)} imports {m}" for m in _imports(path)
                      if m in PROJECT - allowed - own]
    assert not wrong, wrong


def _parameters(node):
    a = node.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, [a.vararg, a.kwarg])]
    return [n.arg for n in names if n.arg not in ("self", "cls")]


def _project_sources():
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "runs", "__pycache__")]
        yield from (os.path.join(folder, n) for n in sorted(names) if n.endswith(".py"))


def test_every_function_fits_on_a_screen():
    """No function outside the tests over 60 lines or 10 parameters: a longer one is several
    steps that want names, a wider one a structure that wants passing whole."""
    paths = list(_project_sources())
    too_big = [f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines, "
               f"{len(_parameters(node))} parameters)"
               for path in paths for node in ast.walk(ast.parse(open(path).read()))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
               and (node.end_lineno - node.lineno + 1 > MAX_LINES or len(_parameters(node)) > MAX_PARAMETERS)]
    assert any(p.endswith("train.py") for p in paths) and not too_big, too_big


SHARED_FLAGS = {"--data-root", "--device", "--workers", "--decode", "--limit", "--no-ema", "--amp"}
# data.prepare's --workers counts the processes that re-encode images, not loaders (and data/ stands
# below flags.py).
OWN_MEANING = {("data/prepare.py", "--workers")}


def test_each_shared_flag_is_defined_once():
    """The flags several scripts share are defined in flags.py alone, so that their name, meaning
    and help agree in every script; the scripts add them with its helpers."""
    where = {}
    for path in _project_sources():
        rel = os.path.relpath(path, ROOT)
        for node in ast.walk(ast.parse(open(path).read())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and node.args
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value in SHARED_FLAGS
                    and (rel, node.args[0].value) not in OWN_MEANING):
                where.setdefault(node.args[0].value, []).append(f"{rel}:{node.lineno}")
    assert set(where) == SHARED_FLAGS, where
    again = {flag: places for flag, places in where.items() if len(places) > 1 or not places[0].startswith("flags.py")}
    assert not again, again


def test_ruff_finds_nothing():
    """The project's linter configuration (pyproject.toml) holds for every file."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr

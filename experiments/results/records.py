"""Each finished run's numbers kept without its weights, so that tables outlive the machine that
trained them: ``results/<task><tag>_runs.json``, extended when the command publishes, and
``<out>/records.json`` for what this command made.

A record holds the row, seed and budget, what made it (``identity``: the run's recipe as train.py
fills it in, how it was evaluated, the data's name and a digest of each list file, the machine),
its test metrics (a row per combination and size), its best validation accuracy and wall minutes.
A run is taken from a record, never trained again, only when all of that is this command's.
"""
import hashlib
import json
import os
import threading

import pandas as pd
import torch

from flags import recipe_of
from utils.errors import UserError
from utils.report import write_text
from utils.validate import check, log_row, read_log, read_rows

# Flags that say where a run goes and how fast, never what it learns; --teacher is a path, checked
# through the job it names; the data is named by its lists (``data_identity``), wherever it lies.
NO_EFFECT = {"workers", "device", "decode", "log_every", "tensorboard", "out", "resume", "overwrite", "compile",
             "deterministic", "teacher", "data_root"}
FIELDS = ("row", "seed", "epochs", "made", "metrics", "val_best", "minutes")


def recipe(job):
    """What makes the job's run learn what it learns: every flag but ``NO_EFFECT``, as train.py
    fills them in."""
    return {k: v for k, v in recipe_of(job.script, job.all_flags).items() if k not in NO_EFFECT}


def machine(jobs, out=None):
    """Where runs train, as titles say it: 'CPU proxy' only where it is one, with the threads per
    run (they change a CPU run's numbers): ``out``'s config.json's, else those of ``jobs`` at once."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        with open(os.path.join(out, "config.json")) as f:
            threads = max(1, int(json.load(f)["threads"]))
    except (TypeError, OSError, ValueError, KeyError):  # no run yet, or a config of another kind
        threads = max(1, (os.cpu_count() or 1) // jobs)
    return f"CPU proxy, {os.cpu_count()}-core CPU, {threads} thread(s) per run"


def data_identity(root):
    """The data by name and by the digest of each list file: edited lists are other data."""
    if root == "synthetic":
        return {"name": "synthetic shapes", "lists": {}}
    lists = {}
    for name in ("train.txt", "val.txt", "test.txt", "classes.txt"):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                lists[name] = hashlib.sha256(f.read()).hexdigest()[:12]
    return {"name": os.path.basename(os.path.normpath(root)), "lists": lists}


def identity(args, job=None, row=None):
    """What makes a record's numbers (JSON-plain, so that it compares with a stored one); without
    ``job`` the data's identity alone."""
    data = data_identity(args.data_root)
    if job is None:
        return data
    as_model = dict(job.evals)[row]
    made = {"recipe": recipe(job), "eval": {"as": as_model, "combos": job.combos, "sizes": job.sizes},
            "data": data, "machine": machine(args.jobs, job.out)}
    if job.after is not None:  # a distilled run is made by its teacher's recipe too
        made["teacher"] = recipe(job.after)
    return json.loads(json.dumps(made, sort_keys=True, default=str))


def run_log(out):
    """The log.csv of the run in ``out``, a row per whole epoch (a cut or damaged row left out)."""
    path = os.path.join(out, "log.csv")
    header, rows = read_log(path)
    if not {"epoch", "val_acc", "seconds"} <= set(header):
        raise UserError(f"{path}: no epoch, val_acc and seconds columns; not the log of a run")
    return pd.DataFrame([r for r in rows if log_row(r, header)], columns=header).astype(float)


def make_record(row, job, made, results, log):
    keep = ("combo", "img_size", "accuracy", "precision", "recall", "f1", "layers", "params", "macs")
    metrics = [{k: r[k] for k in keep if k in r} for r in results]
    val = log["val_acc"].max()
    return {"row": row, "seed": job.seed, "epochs": job.epochs, "made": made, "metrics": metrics,
            "val_best": None if pd.isna(val) else float(val), "minutes": float(log["seconds"].sum() / 60)}


def _checked(path, i, r):
    """One record, each field of the kind and within the bounds this module writes."""
    name = f"{path}: record {i}"
    try:
        for key, kind in (("row", str), ("seed", int), ("epochs", int), ("made", dict), ("metrics", list),
                          ("minutes", float)):
            check(f"{name} {key!r}", r[key], kind, low=0 if kind in (int, float) else None)
        if r["val_best"] is not None:
            check(f"{name} 'val_best'", r["val_best"], float, low=0, high=1)
        for m in r["metrics"]:
            check(f"{name} metrics", m, dict)
            for k in ("accuracy", "precision", "recall", "f1"):
                if k in m:
                    check(f"{name} {k}", m[k], float, low=0, high=1)
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"{exc}; not a file this project wrote, or a damaged one") from None
    return r


def key(r):
    return r["row"], r["seed"], r["epochs"], json.dumps(r["made"], sort_keys=True)


class Records:
    """The published records (``path``) and those this command adds (``own``, saved at once)."""

    def __init__(self, path, own):
        self.path, self.own, self.lock = path, own, threading.Lock()
        self.published = self._load(path)
        self.new = self._load(own)

    def _load(self, path):
        if not os.path.exists(path):
            return []
        records = [_checked(path, i, r) for i, r in enumerate(read_rows(path, FIELDS))]
        seen = {}
        for i, r in enumerate(records):
            if key(r) in seen:
                raise UserError(f"{path}: record {i} repeats record {seen[key(r)]} (row {r['row']}, seed {r['seed']}, "
                                f"{r['epochs']} epochs, made alike); keep one")
            seen[key(r)] = i
        return records

    def find(self, row, seed, epochs, made):
        wanted = (row, seed, epochs, json.dumps(made, sort_keys=True))
        return next((r for r in self.new + self.published if key(r) == wanted), None)

    def add(self, record):
        with self.lock:
            self.new = [r for r in self.new if key(r) != key(record)] + [record]
            write_text(self.own, dumps(self.new))

    def merged(self):
        """The published file's text with this command's records in place of older ones."""
        fresh = {key(r) for r in self.new}
        return dumps([r for r in self.published if key(r) not in fresh] + self.new)


def dumps(records):
    return json.dumps(sorted(records, key=key), indent=1, sort_keys=True) + "\n"


def accuracy(record, combo, size):
    """A record's test accuracy on ``combo`` at ``size`` (NaN where it was not evaluated)."""
    for m in record["metrics"]:
        if m.get("combo", "RGB") == combo and m.get("img_size", size) == size:
            return m["accuracy"]
    return float("nan")

"""``--plan``: every run a command would train or reuse, listed by the parts' own ``runs`` (the
lists their training goes through), with the disk its checkpoints take and, where the bench has
timed the training steps on this machine, the hours. Nothing is trained, evaluated or written."""
import json
import os
from dataclasses import dataclass

import pandas as pd
import torch

import models
from data import describe_root
from data.datasets import SYNTHETIC_SIZES, read_list
from flags import model_config
from utils.checkpoint import RESUME, check_fields, load_checkpoint
from utils.distributed import device_name
from utils.errors import UserError
from utils.report import fmt_table
from utils.validate import check

from .jobs import check_same_recipe
from .parts import PARTS, parts_of

# Flags that leave the work of a training step as it is, or that a rate is matched on by itself
# (size, body, mixed precision); each takes a value.
NOT_STEP = {"--data-root", "--epochs", "--img-size", "--batch-size", "--workers", "--seed", "--limit", "--lr", "--amp",
            "--backbone", "--pretrained", "--warmup-epochs", "--init-from", "--val-combos", "--val-every"}
RATE_KEYS = {"step", "backbone", "img_size", "amp", "device", "batch", "images_per_s"}


@dataclass(frozen=True)
class Step:
    """What one training step of a run computes: its script, ``--model`` and the flags that change
    a step, and the model of its teacher when it distils."""
    script: str
    flags: tuple
    teacher: str = None

    @property
    def label(self):
        return " ".join([*self.flags[1:], *(["--teacher", self.teacher] if self.teacher else [])])


def step_of(run):
    """The training step of ``run``, as the bench names it."""
    kept, flags = [], iter([*run.common, *run.extra])
    for flag in flags:
        if flag in NOT_STEP or flag == "--teacher":
            next(flags)
        else:
            kept.append(flag)
    return Step(run.script, tuple(kept), run.after.model if run.flag("--teacher") else None)


def planned(args):
    """-> [(part, Run)] in training order, each run folder once, under the first part that trains it.
    A stage that depends on runs not yet finished is listed as its ``runs`` decide it now (each
    such run says what it assumes)."""
    runs = {}
    for part in parts_of(args):
        for stage in PARTS[part].runs(args, args.seeds):
            for run in stage():
                runs.setdefault(run.out, (part, run))
    return list(runs.values())


def run_state(run):
    """-> (status, epochs trained); 'refused: ...' where the command would stop at this run."""
    last = os.path.join(run.out, "last.pt")
    if not os.path.exists(last):
        return "new", 0
    try:
        ckpt = load_checkpoint(last)
        check_fields(ckpt, last, needed=RESUME)
        check_same_recipe(ckpt, run.script, [*run.common, *run.extra])
    except UserError as exc:
        return f"refused: {exc}", 0
    if ckpt["epoch"] >= run.epochs and ckpt["step"] == 0:
        return "finished", run.epochs
    return f"partly trained ({ckpt['epoch']} of {run.epochs} epochs)", ckpt["epoch"]


def train_images(args):
    """-> (the data's description, the training images a run's epoch goes through)."""
    spec = describe_root(args.data_root)
    n = SYNTHETIC_SIZES["train"] if spec.synthetic else len(read_list(os.path.join(spec.root, "train.txt")))
    return spec, min(n, args.limit or n)


MODEL_SIZES = {}  # (weights, trained parameters) by model and config: many runs share a model, slow to build


def checkpoint_bytes(run, images, classes):
    """One of a run's two checkpoints (best.pt, last.pt): 4 bytes x (weights and buffers, their EMA
    copy with --ema, and the optimizer's state: a momentum value per trained parameter for SGD,
    two for AdamW), plus the stored targets of --sandwich-stored (2 bytes per image and class)."""
    args = run.script_args()
    config = model_config(args)
    config.pop("pretrained", None)  # the size is the same without the download
    key = repr((args.model, sorted(config.items()), classes))
    if key not in MODEL_SIZES:
        model = models.create_model(args.model, classes, **config)
        MODEL_SIZES[key] = (sum(t.numel() for t in model.state_dict().values() if t.is_floating_point()),
                            sum(p.numel() for p in model.parameters() if p.requires_grad))
    weights, trained = MODEL_SIZES[key]
    slots = 2 if args.opt == "adamw" else int(args.momentum > 0)
    stored = images * classes * 2 if args.sandwich_stored else 0
    return 4 * (weights * (2 if args.ema else 1) + slots * trained) + stored


def load_rates(args):
    """-> (the bench's training-step rows for the device the runs will train on, or every row of
    --plan-rates; what they are, or why there are none)."""
    path = args.plan_rates or os.path.join(args.bench, "model.json")
    if not os.path.exists(path):
        if args.plan_rates:
            raise UserError(f"--plan-rates {path}: no such file")
        return [], f"{path} does not exist"
    try:
        with open(path) as f:
            rows = json.load(f)
        if not isinstance(rows, list) or not all(isinstance(r, dict) and RATE_KEYS <= r.keys() for r in rows):
            raise ValueError("no training-step rates of python -m bench --parts model (rows with "
                             f"{', '.join(sorted(RATE_KEYS))})")
        for r in rows:
            check("images_per_s", r["images_per_s"], float, low=1e-9)
    except (OSError, ValueError, TypeError) as exc:
        if args.plan_rates:
            raise UserError(f"--plan-rates {path}: {exc}") from None
        return [], f"{path}: {exc}"
    here = device_name("cuda" if torch.cuda.is_available() else "cpu")
    measured = ", ".join(sorted({str(r["device"]) for r in rows})) or "nothing"
    if not args.plan_rates and not any(r["device"] == here for r in rows):
        return [], f"{path} was measured on {measured}, not on this machine ({here}); --plan-rates uses it"
    return [r for r in rows if args.plan_rates or r["device"] == here], f"{path}, measured on {measured}"


def rate_of(rates, run):
    """The bench's row for the run's training step at its size, body and mixed precision, or None."""
    key = (step_of(run).label, run.flag("--backbone", "-"), run.img_size, run.flag("--amp", "off"))
    return next((r for r in rates if (r["step"], r["backbone"], r["img_size"], r["amp"]) == key), None)


def plan_rows(args, runs, images, classes, rates):
    """A row per run: where it stands, its checkpoints' size and the hours of its epochs still to train."""
    rows = []
    for part, run in runs:
        status, done = run_state(run)
        if args.no_train and status != "finished":
            status = "not trained (--no-train)"
        left = 0 if args.no_train or status.startswith("refused") else run.epochs - done
        rate = rate_of(rates, run)
        hours = "-" if not left else "no rate" if rate is None else left * images / rate["images_per_s"] / 3600
        rows.append({"part": part, "row": run.row, "seed": run.seed, "epochs": f"{run.epochs}{'*' if run.note else ''}",
                     "px": run.img_size, "status": status, "folder": run.out,
                     "GB": 2 * checkpoint_bytes(run, images, classes) / 1e9, "hours": hours, "left": left,
                     "rate": rate})
    return rows


def print_plan(args):
    runs = planned(args)
    if not runs:
        print(f"plan: --part {args.part} trains nothing")
        return
    spec, images = train_images(args)
    rates, source = load_rates(args)
    rows = plan_rows(args, runs, images, len(spec.classes), rates)
    print(f"plan: {len(rows)} runs, in training order (nothing is trained, evaluated or written)\n")
    print(fmt_table(pd.DataFrame(rows).drop(columns=["left", "rate"]), digits=2))
    for note in dict.fromkeys(run.note for _, run in runs if run.note):
        print(f"* {note}")
    for part in parts_of(args):
        for remark in PARTS[part].remarks(args, args.seeds):
            print(remark)
    print("\n" + "\n".join([*counts(rows), disk_line(rows), *time_lines(rows, images, rates, source)]))


def counts(rows):
    parts, states = [r["part"] for r in rows], [r["status"].split(" (")[0].split(":")[0] for r in rows]
    return [f"{len(rows)} runs ({', '.join(f'{p} {parts.count(p)}' for p in dict.fromkeys(parts))}): "
            f"{', '.join(f'{states.count(s)} {s}' for s in dict.fromkeys(states))}",
            *[f"  {r['folder']}: the command would stop here: {r['status'][len('refused: '):]}"
              for r in rows if r["status"].startswith("refused")]]


def disk_line(rows):
    total, new = sum(r["GB"] for r in rows), sum(r["GB"] for r in rows if r["status"] == "new")
    return (f"disk: {total:.1f} GB of checkpoints, {new:.1f} GB of them not written yet; per run best.pt + last.pt, "
            "each 4 bytes x (weights and buffers + their EMA copy with --ema + optimizer state: one momentum value "
            "per trained parameter for SGD, two for AdamW), plus 2 bytes x images x classes of stored targets with "
            "--sandwich-stored; logs, figures and evaluations not counted")


def time_lines(rows, images, rates, source):
    """The hours of the runs whose training step the bench has timed, and how many have no rate."""
    todo = [r for r in rows if r["left"]]
    timed = [r for r in todo if r["rate"]]
    hint = ("  (python -m bench --parts model --model-img-size SIZE --model-batch BATCH [--amp bf16] times every "
            "training step on this machine into runs/bench/model.json, which --plan-rates reads)")
    if not todo:
        return ["time: nothing left to train"]
    if not timed:
        why = source if not rates else f"{source}, has none for their steps at their size, body and --amp"
        return [f"time: no rate for the {len(todo)} run(s) to train: {why}", hint]
    batches = ", ".join(sorted({str(r["rate"]["batch"]) for r in timed}))
    untimed = len(todo) - len(timed)
    return [f"time: about {sum(r['hours'] for r in timed):.1f} hours for {len(timed)} run(s), one at a time"
            + (f" (no rate for {untimed} more)" if untimed else "")
            + f": epochs left x {images} training images / images per second of the run's training step at its "
            f"size, body and --amp ({source}, batch {batches}); the steps alone: validation, evaluation, data "
            "loading and start-up not counted, and runs trained side by side (--jobs) share the device",
            *([hint] if untimed else [])]

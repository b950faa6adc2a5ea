"""The runs behind every table: a row is an entry script and its flags, as ConvNeXt's TRAINING
file gives one command per row. The command adds the budget every row of a part shares
(``--data-root``, ``--epochs``, ``--img-size``, ``--batch-size``, ``--seed``, ``--pretrained``,
``--lr``...), so ``python -m experiments.results --part task1 --plan`` prints each run in full.
"""
import argparse
import os
from dataclasses import dataclass

from data import combo_name, default_combos, read_bands, rgb_of
from utils.errors import UserError

SINGLE = ["R", "G", "B"]
COMBOS = ["RGB", "RG", "RB", "GB", "R", "G", "B", "BGR"]  # BGR: RGB permuted, a check never averaged in
DISTINCT = COMBOS[:7]

# Task 1: the specialists each channel-adaptive candidate is measured against. An RGB-only model is
# selected on RGB (its mean over seven combinations would pick the epoch whose zero-filled subsets
# happen to score best); an expert trains on, and is selected on, its one channel.
SPECIALISTS = {"plain_zero": ["--model", "plain_zero", "--val-combos", "RGB"],
               **{f"expert-{c}": ["--model", "plain_zero", "--train-channels", c] for c in SINGLE}}
# Candidates validate every sixth epoch (and the last): seven combinations on the proxy's
# validation split, a fifth the size of its training split, would cost more than the sandwich.
CANDIDATES = {
    "dwg": ["--model", "dwg", "--val-every", "6"],  # its default recipe
    "dwg-lean": ["--model", "dwg", "--sandwich-every", "6", "--val-every", "6"],  # half the sandwiches
    # the upper bound: a sandwich on every step, whole batch, every subset size equally often between
    "sandwich-full": ["--model", "dwg", "--sandwich-fraction", "1", "--sandwich-every", "1", "--single-prob", "equal"],
}
TASK1_ROWS = [*SPECIALISTS, "dwg"]  # the headline (plain_mean: plain_zero's checkpoint, mean-filled)
SWEEP_ROWS = [*SPECIALISTS, *CANDIDATES]
# The headline rows also evaluated at other sizes, and those sizes as shares of the training size.
SIZE_ROWS, SIZE_SHARES = {"plain_zero", "dwg"}, (0.75, 1.0, 1.5)

# Multi-band data (bands.txt): dwg on every band; the plain model on all of them, zero-filled where
# some are missing (the expert on all bands too); an expert on RGB. Validated every fifth epoch.
BANDS = {"dwg": ["--model", "dwg"], "plain_zero": ["--model", "plain_zero", "--val-combos", "all"],
         "expert-RGB": ["--model", "plain_zero", "--train-channels", None]}  # the data's RGB bands

# Task 2: ResNet34 and the networks of at most four weighted layers, same recipe; shallow_kd is
# shallow distilled from the ResNet34 of its seed (and, in the sweep, of the budget it saturates at).
TASK2 = {"resnet34": ["--model", "resnet34"], "rrdb": ["--model", "rrdb"], "rrdb_rnn": ["--model", "rrdb_rnn"],
         "shallow": ["--model", "shallow"], "shallow_deep": ["--model", "shallow_deep"],
         "shallow_kd": ["--model", "shallow"]}  # and --teacher: the ResNet34 job's best.pt
TASK2_ROWS = ["resnet34", "rrdb", "rrdb_rnn", "shallow", "shallow_kd"]
TASK2_SWEEP = ["resnet34", "shallow", "shallow_deep"]


@dataclass(frozen=True)
class Job:
    """One training run a table needs, and how it is evaluated. ``after``: the job whose best.pt
    it distils from (trained first); ``evals``: (row, --as-model) pairs, one per table row it
    gives (plain_zero's checkpoint is plain_mean's too)."""
    part: str
    row: str
    seed: int
    epochs: int
    script: str
    flags: tuple
    out: str
    combos: tuple = ("RGB",)
    sizes: tuple = ()
    after: "Job" = None
    evals: tuple = ()

    @property
    def all_flags(self):
        teacher = ("--teacher", os.path.join(self.after.out, "best.pt")) if self.after else ()
        return (*self.flags, *teacher)


def budget(args, seed, epochs):
    """The flags every row of a part shares."""
    flags = {"data-root": args.data_root, "epochs": epochs, "img-size": args.img_size, "batch-size": args.batch_size,
             "seed": seed, "workers": args.workers, "limit": args.limit, "lr": args.lr,
             "amp": None if args.amp == "off" else args.amp}
    return [x for k, v in flags.items() if v is not None for x in (f"--{k}", str(v))]


def task1_job(args, part, row, seed, epochs):
    channel = row.removeprefix("expert-") if row.startswith("expert-") else None
    flags = [*(SPECIALISTS.get(row) or CANDIDATES[row]), *budget(args, seed, epochs),
             "--backbone", args.backbone, *(["--pretrained", args.pretrained] if args.pretrained else [])]
    sizes = [args.img_size]
    if part == "task1" and row in SIZE_ROWS:  # the headline's size table
        sizes = sorted({round(args.img_size * s) for s in SIZE_SHARES})
    evals = ((row, None), ("plain_mean", "plain_mean")) if row == "plain_zero" else ((row, None),)
    lr = f"-lr{args.lr:g}" if args.lr is not None else ""
    out = os.path.join(args.runs, "task1" + args.tag, f"{row}-e{epochs}-s{seed}{lr}")
    return Job(part, row, seed, epochs, "train_dw.py", tuple(flags), out, (channel,) if channel else tuple(COMBOS),
               tuple(sizes), evals=evals)


def task1_jobs(args):
    """--part task1: the headline rows at --epochs, every seed."""
    return [task1_job(args, "task1", row, s, args.epochs) for s in args.seeds for row in TASK1_ROWS]


def sweep_jobs(args):
    """--part task1-sweep: the specialists and the candidates at every budget, every seed."""
    return [task1_job(args, "task1-sweep", row, s, e) for e in args.budgets for s in args.seeds for row in SWEEP_ROWS]


def lr_jobs(args):
    """--part task1-lr: plain_zero at each learning rate of --lrs (the first seed); the rows then
    train at the one with the best RGB validation accuracy (``--lr``)."""
    return [task1_job(argparse.Namespace(**{**vars(args), "lr": lr}), "task1-lr", "plain_zero", args.seeds[0],
                      args.epochs) for lr in args.lrs]


def bands_jobs(args):
    """--part bands: every row of ``BANDS`` at --epochs, every seed, judged on the data's sets
    (``default_combos``: all bands, RGB, each alone, each left out)."""
    bands, waves = read_bands(args.data_root) or (None, None)
    if bands is None:
        raise UserError(f"--part bands takes a multi-band data root; {args.data_root} has no bands.txt")
    rgb, combos = rgb_of(bands, waves), tuple(default_combos(bands, waves))
    body = ["--val-every", "5", "--backbone", args.backbone] + ["--pretrained", args.pretrained] * bool(args.pretrained)
    return [Job("bands", row, s, args.epochs, "train_dw.py",
                (*[combo_name(rgb) if f is None else f for f in flags], *budget(args, s, args.epochs), *body),
                os.path.join(args.runs, "bands" + args.tag, f"{row}-e{args.epochs}-s{s}"), combos, (args.img_size,),
                evals=((row, None),)) for s in args.seeds for row, flags in BANDS.items() if rgb or row != "expert-RGB"]


def task2_job(args, part, row, seed, epochs, teacher=None):
    folder = os.path.join(args.runs, part, f"{row}-e{epochs}-s{seed}")
    return Job(part, row, seed, epochs, "train_rrdb.py", (*TASK2[row], *budget(args, seed, epochs)), folder,
               after=teacher, evals=((row, None),))


def task2_jobs(args):
    """--part task2: every Task 2 row at --epochs, every seed; shallow_kd after its teacher."""
    jobs = []
    for s in args.seeds:
        teacher = task2_job(args, "task2", "resnet34", s, args.epochs)
        jobs += [teacher, *[task2_job(args, "task2", r, s, args.epochs, teacher if r == "shallow_kd" else None)
                            for r in TASK2_ROWS[1:]]]
    return jobs


def task2_sweep_jobs(args, teacher_epochs=None):
    """--part task2-sweep: ResNet34 and the shallow nets at every budget (first seed), then
    shallow distilled from the ResNet34 of ``teacher_epochs`` (where it saturates)."""
    s = args.seeds[0]
    jobs = [task2_job(args, "task2-sweep", r, s, e) for e in args.budgets for r in TASK2_SWEEP]
    if teacher_epochs:
        teacher = task2_job(args, "task2-sweep", "resnet34", s, teacher_epochs)
        jobs.append(task2_job(args, "task2-sweep", "shallow_kd", s, teacher_epochs, teacher))
    return jobs

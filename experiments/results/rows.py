"""What the tables train: the rows of each table, their flags, where their runs live, and the
training runs (``Run``) they come to."""
import argparse
import importlib
import os
from dataclasses import dataclass, field

from flags import build_parser, given_flags, resolve_args

TASK1_COMBOS = ["RGB", "RG", "RB", "GB", "R", "G", "B", "BGR"]
SINGLE = ["R", "G", "B"]


@dataclass
class Row:
    """One row of a Task 1 table: how its checkpoint is trained and how it is evaluated.

    ``recipe`` overrides the shared budget (a fine-tuning row trains fewer epochs at a lower LR);
    ``init`` names the row (same seed) whose checkpoint it starts from; ``same_as`` names the
    row whose checkpoint it evaluates instead of training its own; ``every_seed`` False means
    the first seed only (rivals and ablations).
    """
    name: str
    model: str
    flags: list = field(default_factory=list)
    recipe: dict = field(default_factory=dict)
    init: str = None
    same_as: str = None
    eval_flags: list = field(default_factory=list)
    every_seed: bool = True
    channel: str = None
    backbone: str = None  # None: --backbone


def sandwich(fraction=1, scale=1, every=1, single="equal"):
    """The sandwich's options spelled out (by default the full sandwich: every step, whole batch,
    full size, every subset size drawn equally often between sandwiches), so that a row keeps its
    recipe whatever dwg's defaults become."""
    return ["--sandwich-fraction", str(fraction), "--sandwich-scale", str(scale), "--sandwich-every", str(every),
            "--single-prob", str(single)]


EQUAL_SIZES = ["--single-prob", "equal"]  # subset sampling as dwg drew it before the budget sweep


# Starting from a trained RGB model: plain_zero's 6 epochs, then 3 epochs from its weights.
FINETUNE = {"epochs": 3, "lr": 0.03, "warmup-epochs": 0.3}
EARLIER = ["--no-stem-base", "--no-combo-bn"]  # the stem and shared BatchNorm of the earlier dwg
TASK1_ROWS = [  # in training order
    Row("dwg", "dwg"),
    # An RGB-only model is selected on RGB: its mean over seven combinations would pick the epoch
    # whose zero-filled subsets happen to score best.
    Row("plain_zero", "plain_zero", ["--val-combos", "RGB"]),
    # plain_mean trains exactly as plain_zero does (RGB only; its fill acts only when a channel is
    # missing), so its row evaluates plain_zero's checkpoint instead of training a copy.
    Row("plain_mean", "plain_mean", same_as="plain_zero"),
    *[Row(f"plain_zero-{c}only", "plain_zero", ["--train-channels", c, "--val-combos", c], channel=c)
      for c in SINGLE],
    Row("dwg_finetune", "dwg", recipe=FINETUNE, init="plain_zero", every_seed=False),
    Row("dwg_earlier", "dwg", EARLIER + ["--channel-aug", "subset", *EQUAL_SIZES], every_seed=False),
    Row("plain_dropout", "plain_dropout", every_seed=False),
    Row("seed_dwg", "seed_dwg", every_seed=False),
]
EQUAL_TIME = "-equal-time"  # suffix of the rows trained for as long as dwg, not as many epochs


def equal_time_rows(epochs, same_epochs):
    """plain_zero (and plain_mean, its checkpoint) and the experts, given ``epochs``; when that is
    ``same_epochs``, the equal-epoch rows' own checkpoints (equal time is then equal epochs)."""
    rows = [Row(r.name + EQUAL_TIME, r.model, r.flags, recipe={"epochs": epochs}, channel=r.channel,
                same_as=(r.same_as or r.name) if epochs == same_epochs else r.same_as and r.same_as + EQUAL_TIME)
            for r in TASK1_ROWS if r.model in ("plain_zero", "plain_mean") and not r.recipe]
    return rows


SIZE_ROWS = {"dwg", "plain_zero", "plain_mean"}  # the spatial-size table's rows
TABLE_ORDER = ["dwg", "plain_zero", "plain_zero" + EQUAL_TIME, "plain_mean", "plain_mean" + EQUAL_TIME,
               "single-channel expert", "single-channel expert" + EQUAL_TIME,
               "dwg_finetune", "dwg_earlier", "plain_dropout", "seed_dwg"]
DISTINCT = TASK1_COMBOS[:7]  # BGR is RGB permuted: shown as a check, never counted in aggregates
HEADLINE = ["dwg", "plain_zero", "plain_zero" + EQUAL_TIME, "plain_mean", "single-channel expert",
            "single-channel expert" + EQUAL_TIME]  # the front page's rows
# Each mechanism alone and together, first seed only, with the full sandwich (a sandwich on every
# step, full batch); rows of TASK1_ROWS and SANDWICH_ROWS complete the table.
ABLATION_ROWS = [
    Row("earlier+bn", "dwg", same_as="dwg_earlier", eval_flags=["--recalibrate", "640"]),
    Row("base", "dwg", ["--no-combo-bn", "--channel-aug", "subset", *EQUAL_SIZES]),
    Row("base+bn", "dwg", same_as="base", eval_flags=["--recalibrate", "640"]),
    Row("base+init", "dwg", ["--no-combo-bn", "--channel-aug", "subset", *EQUAL_SIZES], recipe=FINETUNE,
        init="plain_zero"),
    Row("base+init+bn", "dwg", same_as="base+init", eval_flags=["--recalibrate", "640"]),
    Row("base+init+sandwich", "dwg", ["--no-combo-bn", *sandwich()], recipe=FINETUNE, init="plain_zero"),
    Row("finetune-full", "dwg", sandwich(), recipe=FINETUNE, init="plain_zero", every_seed=False),
    Row("dwg+affine", "dwg", ["--combo-affine", *sandwich()], every_seed=False),
]
ABLATION_NAMES = {
    "dwg_earlier": "earlier dwg: template stem, subset sampling, shared BN",
    "earlier+bn": "earlier dwg + BN statistics per set (recalibrated)",
    "base": "base kernels (subset sampling, shared BN)",
    "base+bn": "base + BN per set (recalibrated)",
    "base+init": "base, initialised from plain_zero (subset sampling)",
    "base+init+bn": "base, init + BN per set (recalibrated)",
    "base+init+sandwich": "base, init + sandwich",
    "finetune-full": "base, init + sandwich + BN per set",
    "sandwich-full": "base + sandwich + BN per set, from scratch",
    "dwg+affine": "base + sandwich + BN per set + BN scale and shift per set",
}
# The sandwich's cost options (SandwichLoss), one at a time and together, first seed only.
SANDWICH_ROWS = [
    Row("sandwich-quarter", "dwg", sandwich(fraction=0.25), every_seed=False),
    Row("sandwich-quarter-side0.75", "dwg", sandwich(fraction=0.25, scale=0.75), every_seed=False),
    Row("sandwich-side0.75", "dwg", sandwich(scale=0.75), every_seed=False),
    Row("sandwich-every3", "dwg", sandwich(every=3), every_seed=False),
    Row("sandwich-every3-quarter", "dwg", sandwich(fraction=0.25, every=3), every_seed=False),
    Row("sandwich-full", "dwg", sandwich(), every_seed=False),
]
# A body other than the small CNN, first seed only.
RESNET18_ROWS = [Row("plain_zero-resnet18", "plain_zero", backbone="resnet18"),
                 Row("dwg-resnet18", "dwg", sandwich(), backbone="resnet18")]  # the full sandwich
# The Task 1 budget sweep (task1_sweep.py): the specialists, dwg with the default it had before
# the sweep spelled out (every subset size drawn equally often), and the recipes that try to move
# the front; the sweep chose dwg-singles as dwg's default.
# Candidates validate every sixth epoch (and the last): seven combinations on a validation split a
# fifth the size of the training split would otherwise cost more than the sandwich itself.
SWEEP_VAL = ["--val-every", "6"]
# Each recipe spends about 1.2x plain_zero's images a step: the packed sandwich every step on a
# tenth of the batch per reduced set (two sets); delayed, the full set alone for half the steps,
# then a fifth of the batch per set; stored targets, the sweep's dwg whose steps between sandwiches
# also distil from each image's stored full-set prediction (no extra pass); singles, the sweep's dwg
# whose steps between sandwiches draw a single channel half the time instead of a third; lean, the
# same with a sandwich every sixth step, the one recipe here that aims under 1.2x per epoch; singles75,
# dwg-singles drawing a single channel three times in four between sandwiches (the singles trailed
# most at the saturated budget); singles-stored, dwg-singles whose steps between sandwiches also distil
# from the stored targets (the single channels learn from the full set on every step, not one in three);
# singles-affine, dwg-singles whose channel sets also keep their own BatchNorm scale and shift.
SINGLES = sandwich(fraction=0.25, every=3, single=0.5)  # dwg-singles, the base of the rows named after it
SWEEP_RECIPES = {
    "dwg-packed": ["--sandwich-packed", *sandwich(fraction=0.1)],
    "dwg-packed-delayed": ["--sandwich-packed", "--sandwich-delay", "0.5", *sandwich(fraction=0.2)],
    "dwg-stored": ["--sandwich-stored", *sandwich(fraction=0.25, every=3)],
    "dwg-singles": SINGLES,
    "dwg-lean": sandwich(fraction=0.25, every=6, single=0.5),
    "dwg-singles75": sandwich(fraction=0.25, every=3, single=0.75),
    "dwg-singles-stored": ["--sandwich-stored", *SINGLES],
    "dwg-singles-affine": ["--combo-affine", *SINGLES],
}
# The recipes whose claim rests on every seed, not the first only: those level with the specialists.
SEEDED_RECIPES = {"dwg-singles", "dwg-lean", "dwg-singles75", "dwg-singles-stored"}
SWEEP_ROWS = [Row("plain_zero", "plain_zero", ["--val-combos", "RGB"]),
              *[Row(f"plain_zero-{c}only", "plain_zero", ["--train-channels", c, "--val-combos", c], channel=c)
                for c in SINGLE],
              Row("dwg", "dwg", [*sandwich(fraction=0.25, every=3), *SWEEP_VAL]),
              *[Row(name, "dwg", [*flags, *SWEEP_VAL], every_seed=name in SEEDED_RECIPES)
                for name, flags in SWEEP_RECIPES.items()],
              # BatchNorm statistics of every set re-estimated after training (no training of its own)
              Row("dwg+recalibrated", "dwg", same_as="dwg", eval_flags=["--recalibrate", "640"], every_seed=False)]
ROWS = {r.name: r for r in TASK1_ROWS + ABLATION_ROWS + SANDWICH_ROWS + RESNET18_ROWS}
TASK2_MODELS = ["resnet34", "rrdb", "rrdb_rnn", "shallow"]
SIZES = [48, 64, 96]


SWEEP_MODELS = ["resnet34", "shallow", "shallow_deep"]


# The recipe options on the shallow net, each against the plain recipe. EMA decay 0.998 averages
# about 500 steps: a quarter of a 12-epoch run at batch 64 on imagenette-mini (148 steps an epoch),
# long enough to smooth the noise, short enough not to lag behind the end of the cosine schedule.
RECIPES = {"plain": [], "ema": ["--ema", "0.998"], "mixup+cutmix": ["--mixup", "0.2", "--cutmix", "1.0"]}


def recipe(args, seed, **overrides):
    """The flags every row shares: one budget for all, unless a row overrides part of it."""
    values = {"data-root": args.data_root, "epochs": args.epochs, "img-size": args.img_size,
              "batch-size": args.batch_size, "workers": args.workers, "seed": seed,
              **({"limit": args.limit} if getattr(args, "limit", None) else {}),
              **({"lr": args.lr} if args.lr is not None else {}), **({"amp": args.amp} if args.amp != "off" else {}),
              **overrides}
    return [item for k, v in values.items() for item in (f"--{k}", str(v))]


def row_combos(row):
    """The combinations a Task 1 row is evaluated on: an expert's own channel, else all of them."""
    return [row.channel] if row.channel else TASK1_COMBOS


def row_recipe(args, row, seed):
    """A Task 1 row's shared flags, its body among them (a run of another body is not reused)."""
    return recipe(args, seed, backbone=row.backbone or args.backbone, **row.recipe)


def run_dir(args, row, seed):
    return os.path.join(args.runs, "task1", f"{row.name}-s{seed}")


def trained_dir(args, row, seed):
    """The run folder that holds ``row``'s checkpoints: its own, or that of the row it reuses."""
    return os.path.join(args.runs, "task1", f"{row.same_as or row.name}-s{seed}")


def schedule(rows, seeds):
    """(row, seed) pairs to evaluate: the rows of every seed first (seed by seed), then the
    first-seed-only rows, so that an interrupted command has whole seeds."""
    return ([(r, s) for s in seeds for r in rows if r.every_seed]
            + [(r, seeds[0]) for r in rows if not r.every_seed])



@dataclass(frozen=True)
class Run:
    """One training run a table needs: its folder, the script and flags that train it, and the run
    whose best.pt it starts from or distils from (``after``, trained first). ``common`` are the
    flags a finished run in the folder must have been trained with; ``note`` says what the run
    list assumed about runs that have not finished yet."""
    row: str
    seed: int
    out: str
    script: str
    common: tuple
    extra: tuple = ()
    after: "Run" = None
    note: str = ""

    def flag(self, name, default=None):
        flags = [*self.common, *self.extra]
        return flags[flags.index(name) + 1] if name in flags else default

    @property
    def model(self):
        return self.flag("--model")

    @property
    def epochs(self):
        return int(self.flag("--epochs"))

    @property
    def img_size(self):
        return int(self.flag("--img-size"))

    def script_args(self):
        """The run's flags as its script fills them in, every default filled in."""
        return argparse.Namespace(**trained_recipe(self.script, [*self.common, *self.extra]))


def trained_recipe(script, flags):
    """Every flag of a run that ``script`` trains with ``flags``, filled in as train.py fills it."""
    defaults = importlib.import_module(script.removesuffix(".py")).DEFAULTS
    parser = build_parser("", **defaults)
    args, _ = resolve_args(parser.parse_args(flags), given_flags(parser, flags), parser, defaults["default_model"])
    return vars(args)


def row_runs(args, wanted):
    """The runs behind ``wanted`` (row, seed) pairs, in that order, each after the run it starts
    from (first); a row that evaluates another row's checkpoint (``same_as``) needs that run."""
    runs, known = {}, {**ROWS, **{r.name: r for r, _ in wanted}}  # equal-time and budget rows are made per call

    def need(row, seed):
        for name in (row.init, row.same_as):
            if name:
                need(known[name], seed)
        if row.same_as or (row.name, seed) in runs:
            return
        init = runs[(row.init, seed)] if row.init else None
        flags = ["--model", row.model, *row.flags]
        if args.pretrained and not row.init:
            flags += ["--pretrained", args.pretrained]
        if init:
            flags += ["--init-from", os.path.join(init.out, "best.pt")]
        runs[(row.name, seed)] = Run(row.name, seed, run_dir(args, row, seed), "train_dw.py",
                                     tuple(row_recipe(args, row, seed)), tuple(flags), after=init)
    for row, seed in wanted:
        need(row, seed)
    return list(runs.values())


def wanted_rows(args, rows, seeds):
    """(row, seed) pairs of ``rows`` in ``schedule`` order, only the rows of ``--models`` (each
    with its equal-time twin) when given."""
    if args.models:
        rows = [r for r in rows if r.name.removesuffix(EQUAL_TIME) in args.models.split(",")]
    return schedule(rows, seeds)

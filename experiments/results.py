"""The result tables and figures of docs/: every row trained and evaluated by the entry scripts.

    python -m experiments.results [--part task1|task1-ablation|task1-sandwich|task1-resnet18|task2|task2-sweep|all]
                                  [--data-root DIR] [--backbone small] [--pretrained imagenet] [--img-size 64]
                                  [--epochs 6] [--batch-size 64] [--lr 0.1] [--amp bf16] [--seeds 0,1,2]
                                  [--budgets 6,12,24,48] [--jobs 2] [--no-train] [--models ROW,...]
                                  [--out runs/results] [--update-docs]

Trains every row with the repository's own entry scripts (<out>/task1/<row>-s<seed>/ and so on,
resumable: a finished run is reused, an interrupted one resumed; ``--jobs`` runs at once, each
with cores/jobs threads), evaluates it with test_dw.py/test_rrdb.py (an evaluation newer than its
checkpoints is reused), and writes the tables (.md, .json, .csv) to <out>/tables/ and the figures
to <out>/figs/; titles state the data and the settings. ``--update-docs`` publishes instead: the
tables to results/, the figures to figs/ and each table into its marked section of docs/.
``--no-train`` makes the tables from the finished runs only (Task 1 rows; sweep budgets whose
ResNet34 has finished). Never run by CI, except end-to-end tests at toy size.
"""
import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd
import torch

from train import BEFORE_FLAG
from utils.checkpoint import load_checkpoint
from utils.errors import Parser, UserError, at_least, cli, int_list, non_empty
from utils.report import heatmap, markdown, plt, save_figure, update_doc, write_results

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


def sandwich(fraction=1, scale=1, every=1):
    """The sandwich's cost options spelled out (by default the full sandwich: every step, whole
    batch, full size), so that a row keeps its recipe whatever dwg's defaults become."""
    return ["--sandwich-fraction", str(fraction), "--sandwich-scale", str(scale), "--sandwich-every", str(every)]


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
    Row("dwg_earlier", "dwg", EARLIER + ["--channel-aug", "subset"], every_seed=False),
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
    ROWS.update({r.name: r for r in rows})
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
    Row("base", "dwg", ["--no-combo-bn", "--channel-aug", "subset"]),
    Row("base+bn", "dwg", same_as="base", eval_flags=["--recalibrate", "640"]),
    Row("base+init", "dwg", ["--no-combo-bn", "--channel-aug", "subset"], recipe=FINETUNE, init="plain_zero"),
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
    # dwg's defaults: its own seed-0 run
    Row("sandwich-every3-quarter", "dwg", same_as="dwg", every_seed=False),
    Row("sandwich-full", "dwg", sandwich(), every_seed=False),
]
# A body other than the small CNN, first seed only.
RESNET18_ROWS = [Row("plain_zero-resnet18", "plain_zero", backbone="resnet18"),
                 Row("dwg-resnet18", "dwg", sandwich(), backbone="resnet18")]  # the full sandwich
ROWS = {r.name: r for r in TASK1_ROWS + ABLATION_ROWS + SANDWICH_ROWS + RESNET18_ROWS}
TASK2_MODELS = ["resnet34", "rrdb", "rrdb_rnn", "shallow"]
SIZES = [48, 64, 96]


def parse_args(argv):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="all",
                   choices=["task1", "task1-ablation", "task1-sandwich", "task1-resnet18", "task2", "task2-sweep",
                            "task2-headline", "task2-recipe", "all"],
                   help="which table(s); task2-headline pastes the front page's Task 2 rows from the sweep's "
                        "written table (with --update-docs)")
    p.add_argument("--budgets", default="6,12,24,48", type=int_list(1), help="task2-sweep: epochs per run")
    p.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data/imagenette-mini"))
    p.add_argument("--seeds", default="0", type=int_list(0))
    p.add_argument("--backbone", default="small", help="body of the Task 1 rows: small|resnet18|densenet121")
    p.add_argument("--pretrained", default=None, help="Task 1 rows start from these weights (e.g. imagenet); "
                                                      "Task 2 trains from scratch")
    p.add_argument("--epochs", type=at_least(1), default=6)
    p.add_argument("--img-size", type=at_least(8), default=64)
    p.add_argument("--batch-size", type=at_least(1), default=64)
    p.add_argument("--lr", type=at_least(0.0, float), default=None, help="peak learning rate (default: the scripts')")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="mixed precision (CUDA)")
    p.add_argument("--workers", type=at_least(0), default=1)
    p.add_argument("--models", default=None, type=non_empty,
                   help="only these rows (comma-separated names; default every row of the part)")
    p.add_argument("--no-train", action="store_true",
                   help="tables from the finished runs only: Task 1 rows; sweep budgets whose ResNet34 has finished, "
                        "a shallow run still training shown as a dash")
    p.add_argument("--jobs", type=at_least(1), default=1,
                   help="runs trained (and evaluated) at once, each with cores/jobs threads")
    p.add_argument("--out", "--runs", dest="runs", default="runs/results",
                   help="runs (checkpoints, logs, evaluations) and, unless --update-docs, tables and figures")
    p.add_argument("--results", default=None, help="tables (default: <out>/tables, or results/ with --update-docs)")
    p.add_argument("--figs", default=None, help="figures (default: <out>/figs, or figs/ with --update-docs)")
    p.add_argument("--bench", default="results/bench", help="the bench's tables (step and epoch cost ratios)")
    p.add_argument("--update-docs", action="store_true",
                   help="publish: tables to results/, figures to figs/, and each table into its marked section "
                        "of --docs (docs/*.md)")
    p.add_argument("--docs", default="docs", help="the folder (or one file) whose marked sections are replaced")
    p.add_argument("--tag", default="", help="suffix of the Task 1 table's files and docs section (e.g. -32px)")
    args = p.parse_args(argv)
    args.results = args.results or ("results" if args.update_docs else os.path.join(args.runs, "tables"))
    args.figs = args.figs or ("figs" if args.update_docs else os.path.join(args.runs, "figs"))
    return args


def sh(*cmd, threads=None):
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    code = subprocess.run([sys.executable, *cmd], env=env).returncode
    if code:
        raise UserError(f"{' '.join(cmd[:3])} ... exited with status {code} (its error is above); finished runs "
                        "are kept and the same command resumes the rest")


def train(script, out, common, *extra, threads=None):
    """Train unless a finished run is already there; resume an unfinished one."""
    last = os.path.join(out, "last.pt")
    if os.path.exists(last):
        done = load_checkpoint(last)
        check_same_recipe(done, common)
        if done["epoch"] >= done["args"]["epochs"] and done["step"] == 0:
            return
        sh(script, "--resume", out, threads=threads)
    else:
        sh(script, *common, *extra, "--out", out, "--overwrite", threads=threads)


def recipe(args, seed, **overrides):
    """The flags every row shares: one budget for all, unless a row overrides part of it."""
    values = {"data-root": args.data_root, "epochs": args.epochs, "img-size": args.img_size,
              "batch-size": args.batch_size, "workers": args.workers, "seed": seed,
              **({"lr": args.lr} if args.lr is not None else {}), **({"amp": args.amp} if args.amp != "off" else {}),
              **overrides}
    return [item for k, v in values.items() for item in (f"--{k}", str(v))]


def row_recipe(args, row, seed):
    """A Task 1 row's shared flags, its body among them (a run of another body is not reused)."""
    return recipe(args, seed, backbone=row.backbone or args.backbone, **row.recipe)


def threads_per_run(jobs):
    return max(1, (os.cpu_count() or 1) // jobs)


def in_parallel(jobs, tasks):
    """Run ``tasks`` (callables taking a thread count) ``jobs`` at a time, in order; re-raise the
    first failure."""
    threads = threads_per_run(jobs)
    failed = threading.Event()

    def guarded(task):  # nothing new starts after a failure; jobs already running finish
        if failed.is_set():
            return
        try:
            task(threads=threads)
        except BaseException:
            failed.set()
            raise
    with ThreadPoolExecutor(jobs) as pool:
        for f in [pool.submit(guarded, task) for task in tasks]:
            f.result()


def run_dir(args, row, seed):
    return os.path.join(args.runs, "task1", f"{row.name}-s{seed}")


def schedule(rows, seeds):
    """(row, seed) pairs to evaluate: the rows of every seed first (seed by seed), then the
    first-seed-only rows, so that an interrupted command has whole seeds."""
    return ([(r, s) for s in seeds for r in rows if r.every_seed]
            + [(r, seeds[0]) for r in rows if not r.every_seed])


def train_rows(args, wanted):
    """Train the runs behind ``wanted`` (row, seed) pairs, ``--jobs`` at a time in that order; a
    row that starts from another row's checkpoint waits for it."""
    order = []  # runs to train, each after the runs it needs

    def need(row, seed):
        for name in (row.init, row.same_as):
            if name:
                need(ROWS[name], seed)
        if not row.same_as and (row.name, seed) not in order:
            order.append((row.name, seed))
    for row, seed in wanted:
        need(row, seed)
    done = {key: threading.Event() for key in order}

    def train_row(name, seed, threads):
        row = ROWS[name]
        flags = ["--model", row.model, *row.flags]
        if args.pretrained and not row.init:
            flags += ["--pretrained", args.pretrained]
        if row.init:
            done[(row.init, seed)].wait()
            flags += ["--init-from", os.path.join(run_dir(args, ROWS[row.init], seed), "best.pt")]
        try:
            train("train_dw.py", run_dir(args, row, seed), row_recipe(args, row, seed), *flags,
                  threads=threads)
        finally:
            done[(name, seed)].set()
    in_parallel(args.jobs, [functools.partial(train_row, *key) for key in order])


def task1_rows(args, rows, seeds):
    """Train (``train_rows``) and evaluate ``rows``; -> DataFrame of evaluation rows."""
    if args.models:  # a row's equal-time twin comes with it
        rows = [r for r in rows if r.name.removesuffix(EQUAL_TIME) in args.models.split(",")]
    wanted = schedule(rows, seeds)
    if args.no_train:
        wanted = [(r, s) for r, s in wanted if finished(args, r, s)]
        if not wanted:
            raise UserError(f"--no-train: no finished run of these rows under {args.runs}/task1 "
                            "(train them first: the same command without --no-train)")
        for row, seed in wanted:  # a finished run of another budget must not slip in either
            if not row.same_as:
                check_same_recipe(load_checkpoint(os.path.join(run_dir(args, row, seed), "last.pt")),
                                  row_recipe(args, row, seed))
    else:
        train_rows(args, wanted)
    return evaluate_rows(args, wanted)


def finished(args, row, seed):
    """Whether the run behind ``row`` has trained all its epochs."""
    return run_finished(run_dir(args, ROWS[row.same_as] if row.same_as else row, seed))


def run_finished(out):
    last = os.path.join(out, "last.pt")
    if not os.path.exists(last):
        return False
    ckpt = load_checkpoint(last)
    return ckpt["epoch"] >= ckpt["args"]["epochs"] and ckpt["step"] == 0


def evaluate_rows(args, wanted):
    """test_dw.py on the checkpoint behind each (row, seed), unless its evaluation is newer."""
    tasks, results = [], []
    for row, seed in wanted:
        ev = os.path.join(run_dir(args, row, seed), "eval")
        best = os.path.join(run_dir(args, ROWS[row.same_as] if row.same_as else row, seed), "best.pt")
        results.append((row, seed, ev))
        sizes = sorted({*SIZES, args.img_size}) if row.name in SIZE_ROWS else [args.img_size]
        combos = [row.channel] if row.channel else TASK1_COMBOS
        if not evaluated(os.path.join(ev, "results.json"), [best], {(c, s) for c in combos for s in sizes}):
            tasks.append(functools.partial(
                sh, "test_dw.py", "--checkpoint", best, "--as-model", row.model, "--data-root", args.data_root,
                "--combos", ",".join(combos), "--img-sizes", ",".join(map(str, sizes)),
                "--workers", str(args.workers), "--out", ev, *row.eval_flags))
    in_parallel(args.jobs, tasks)
    return pd.DataFrame([{**r, "model": row.name, "seed": seed}
                         for row, seed, ev in results for r in json.load(open(os.path.join(ev, "results.json")))])


def check_same_recipe(ckpt, flags):
    """A run folder left by another budget must not slip into the tables."""
    for flag, value in zip(flags[::2], flags[1::2]):
        key = flag.lstrip("-").replace("-", "_")
        if str(ckpt["args"].get(key)) != value:
            raise UserError(f"{ckpt['path']} was trained with {flag} {ckpt['args'].get(key)}, "
                            f"not {value}; remove that folder or pass another --runs")


def is_newer(path, than):
    """An evaluation is reused only if it was written after the checkpoint it evaluates."""
    return os.path.exists(path) and os.path.getmtime(path) > os.path.getmtime(than)


def evaluated(path, checkpoints, cells=None):
    """Whether ``path`` holds an evaluation of exactly ``checkpoints`` (and of exactly the
    (combination, size) ``cells`` when given), written after all of them."""
    if not all(is_newer(path, c) for c in checkpoints):
        return False
    rows = json.load(open(path))
    # Paths as the evaluation wrote them (relative to where it ran) and as asked now: the same files?
    done = [os.path.realpath(p) for p in dict.fromkeys(r["checkpoint"] for r in rows)]
    return done == [os.path.realpath(c) for c in checkpoints] and \
        (cells is None or {(r["combo"], r["img_size"]) for r in rows} == cells)


def evaluate_side_by_side(args, ev, checkpoints):
    """test_rrdb.py on ``checkpoints`` side by side into ``ev``, the first (a ResNet34) the
    baseline, unless an evaluation of exactly these is newer than all of them."""
    path = os.path.join(ev, "results.json")
    if evaluated(path, checkpoints):
        return json.load(open(path))
    sh("test_rrdb.py", "--checkpoints", *checkpoints, "--baseline", checkpoints[0], "--data-root", args.data_root,
       "--workers", str(args.workers), "--out", ev)
    return json.load(open(path))


def paste(args, section, text):
    """The table also goes into its marked section of the docs, when asked (``--update-docs``)."""
    if args.update_docs:
        update_doc(section, text, args.docs)


def machine(args):
    """Where the runs trained, as a title says it: 'CPU proxy' only where it is one, with the threads
    of each run (they change a CPU run's arithmetic, and so its numbers)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return (f"CPU proxy, {os.cpu_count()}-core CPU, {threads_per_run(args.jobs)} thread(s) "
            f"per run")


def budget(args):
    extra = [f"from {args.pretrained} weights" if args.pretrained else "", f"lr {args.lr:g}" if args.lr else "",
             f"amp {args.amp}" if args.amp != "off" else ""]
    return (f"{machine(args)}: {args.epochs} epochs, {args.img_size}px, batch {args.batch_size}, "
            f"{''.join(e + ', ' for e in extra if e)}seed(s) {', '.join(map(str, args.seeds))}")


def data_name(args):
    return "synthetic shapes" if args.data_root == "synthetic" else os.path.basename(os.path.normpath(args.data_root))


def mean_std(df, keys, values):
    """Mean and sample standard deviation (ddof=1, NaN for one seed) over the seeds."""
    g = df.groupby(keys, sort=False)[values]
    out = g.mean()
    std = g.std(ddof=1).add_suffix("_std")
    return pd.concat([out, std], axis=1).reset_index().assign(seeds=g.size().values)


def run_logs(args, name, seeds):
    """The log.csv of each finished run behind row ``name``, over ``seeds``."""
    row = ROWS[ROWS[name].same_as] if ROWS[name].same_as else ROWS[name]
    return [pd.read_csv(os.path.join(run_dir(args, row, s), "log.csv")) for s in seeds if finished(args, row, s)]


def time_ratio(args, seeds):
    """How much longer dwg trains than plain_zero per epoch, with each row's mean minutes per run
    from the logs of their finished runs; None until both rows have one.

    The ratio is for training (loading and steps, without validation). It comes from ``python -m
    bench --parts epoch`` (whole epochs of the two, alternated, nothing else running) when
    results/bench/epoch.json timed this setting and dwg's recipe; otherwise from the runs' own
    logs (median seconds per epoch over every epoch of every seed), which other work on the
    machine perturbs."""
    dwg, plain = run_logs(args, "dwg", seeds), run_logs(args, "plain_zero", seeds)
    if not dwg or not plain:
        return None
    d, p = pd.concat(dwg), pd.concat(plain)
    cost = {"train": d["train_seconds"].median() / p["train_seconds"].median(),
            "whole": d["seconds"].median() / p["seconds"].median(), "source": "the runs' logs",
            "dwg_min": sum(log["seconds"].sum() for log in dwg) / len(dwg) / 60,
            "plain_min": sum(log["seconds"].sum() for log in plain) / len(plain) / 60}
    bench = bench_epoch_ratio(args, load_checkpoint(os.path.join(run_dir(args, ROWS["dwg"], seeds[0]), "last.pt")))
    if bench is not None:
        cost.update(train=bench["ratio_to_plain"], whole=bench["epoch_ratio_to_plain"],
                    source=f"python -m bench --parts epoch, {bench['repeats']} alternated runs each")
    return cost


def bench_epoch_ratio(args, dwg_run):
    """The bench's row for dwg in results/bench/epoch.json if it timed this data, size, batch and
    dwg's sandwich recipe as ``dwg_run`` (a checkpoint) trained it; else None."""
    path = os.path.join(args.bench, "epoch.json")
    if not os.path.exists(path):
        return None
    for row in json.load(open(path)):
        if row["model"] == "dwg" and row["data"] == data_name(args) and row["img_size"] == args.img_size \
                and row["batch"] == args.batch_size \
                and all(dwg_run["args"].get(k) == v for k, v in row.items() if k.startswith("sandwich_")):
            return row
    return None


def expert_row(model):
    """The experts' rows (one channel each) share one table row, at equal epochs or equal time."""
    if "only" not in model:
        return model
    return "single-channel expert" + (EQUAL_TIME if model.endswith(EQUAL_TIME) else "")


def task1(args, seeds):
    df = task1_rows(args, TASK1_ROWS, seeds)
    cost = time_ratio(args, seeds)
    if cost is not None:
        # Training time, not validation: the proxy's val split is a fifth of its train split and
        # dwg validates seven combinations, where the course's 450 val images are 0.7% of 63k.
        cost["epochs"] = max(1, int(args.epochs * cost["train"] + 0.5))  # half up, not to even
        df = pd.concat([df, task1_rows(args, equal_time_rows(cost["epochs"], args.epochs), seeds)])
    metrics = ["accuracy", "precision", "recall", "f1", "f1_macro"]
    agg = mean_std(df, ["model", "img_size", "combo"], metrics)
    main = agg[agg.img_size == args.img_size].assign(row=lambda d: d.model.map(expert_row))
    title = (f"Task 1 on {data_name(args)} test split, {args.backbone} backbone ({budget(args)}); "
             "RGB-only rows selected on RGB validation accuracy, the others on the mean over seven combinations")
    if cost is not None:
        title += (f"; equal time: a dwg epoch trains {cost['train']:.2f}x as long as a plain_zero epoch "
                  f"({cost['whole']:.2f}x with validation; from {cost['source']}; the runs took {cost['dwg_min']:.0f} "
                  f"and {cost['plain_min']:.0f} minutes, runs sharing the cores), so the '{EQUAL_TIME[1:]}' rows "
                  f"train round({args.epochs} x {cost['train']:.2f}) = {cost['epochs']} epochs")
    write_results(main.drop(columns="row").to_dict("records"), args.results, "task1" + args.tag, title)
    means, shown = comparison_table(main, args, cost)
    write_results(means.reset_index(names="model").to_dict("records"), args.results, "task1_accuracy" + args.tag,
                  title + "; accuracy per combination (mean over seeds)")
    targets = task1_targets(main)
    write_results(targets.to_dict("records"), args.results, "task1_targets" + args.tag, title + "; targets")
    sizes = agg[agg.model.isin(SIZE_ROWS)].pivot_table(index=["model", "combo"], columns="img_size",
                                                       values="accuracy", sort=False).reset_index()
    sizes.columns = [str(c) if isinstance(c, int) else c for c in sizes.columns]
    write_results(sizes.to_dict("records"), args.results, "task1_sizes" + args.tag,
                  f"Task 1 spatial-size invariance: accuracy of the {args.img_size}px checkpoints at "
                  f"{', '.join(map(str, sorted({*SIZES, args.img_size})))}px ({budget(args)})")
    heatmap(means[[c for c in TASK1_COMBOS if c in means.columns]],
            os.path.join(args.figs, f"task1_accuracy{args.tag}.png"),
            f"Task 1 test accuracy ({data_name(args)}, {budget(args)})", text=shown)
    text = markdown(shown.reset_index(names="model"))
    paste(args, "task1" + args.tag, f"{title}; test accuracy as a fraction, mean ± sample standard deviation "
                  f"over the seeds where a row has several\n\n{text}\n\nTargets (1 point; means over the seeds):\n\n"
                  f"{markdown(targets)}\n\nSpatial-size invariance (same checkpoints, accuracy, mean over seeds):"
                  f"\n\n{markdown(sizes)}")
    headline = shown.loc[[r for r in HEADLINE if r in shown.index], [*DISTINCT, "epochs", "seeds"]]
    if not args.tag:  # the front page shows the main setting
        paste(args, "task1-headline", f"{title}; test accuracy, mean ± sample standard deviation over the seeds "
              f"([all rows, targets and figures](docs/task1.md))\n\n{markdown(headline.reset_index(names='model'))}")
    print(f"{title}\n\n{text}\n\n{markdown(targets)}")


def comparison_table(main, args, cost):
    """-> (mean accuracy per row and combination with mean/worst over the seven distinct
    combinations, the same as text with '± std' where a row has several seeds, epochs, seeds)."""
    def pivot(values):
        return main.pivot_table(index="row", columns="combo", values=values, sort=False, dropna=False)
    means, stds, counts = pivot("accuracy"), pivot("accuracy_std"), pivot("seeds")
    combos = [c for c in TASK1_COMBOS if c in means.columns]
    order = [r for r in TABLE_ORDER if r in means.index]
    means, stds, counts = (t.reindex(index=order, columns=combos) for t in (means, stds, counts))
    shown = means.copy().astype(object)
    for row in means.index:
        for combo in combos:
            m, sd, n = means.loc[row, combo], stds.loc[row, combo], counts.loc[row, combo]
            shown.loc[row, combo] = "" if pd.isna(m) else f"{m:.3f} ± {sd:.3f}" if n > 1 else f"{m:.3f}"
    distinct = means[[c for c in DISTINCT if c in combos]]
    means["mean"] = distinct.mean(axis=1, skipna=False)
    means["worst"] = distinct.min(axis=1, skipna=False)
    for col in ("mean", "worst"):
        shown[col] = means[col].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    epochs = {"dwg_finetune": f"{args.epochs}+{FINETUNE['epochs']}"}
    shown["epochs"] = [cost["epochs"] if r.endswith(EQUAL_TIME) else epochs.get(r, args.epochs) for r in means.index]
    shown["seeds"] = ["/".join(str(int(n)) for n in counts.loc[r].dropna().unique()) for r in means.index]
    return means, shown


def task1_targets(main, candidates=("dwg",)):
    """Each channel-adaptive candidate against plain_zero on RGB and against each single-channel
    expert, trained for as many epochs and for as long: gap in points, target 1 point."""
    acc = main.set_index(["row", "combo"])
    out = []
    for model in candidates:
        for combo in ["RGB", *SINGLE]:
            rival = "plain_zero" if combo == "RGB" else "single-channel expert"
            for name, when in ((rival, "equal epochs"), (rival + EQUAL_TIME, "equal time")):
                if (model, combo) not in acc.index or (name, combo) not in acc.index:
                    continue
                a, r = acc.loc[(model, combo)], acc.loc[(name, combo)]
                gap = 100 * (a["accuracy"] - r["accuracy"])
                out.append({"model": model, "combo": combo, "budget": when, "accuracy": a["accuracy"],
                            "std": a["accuracy_std"], "rival": rival, "rival_accuracy": r["accuracy"],
                            "rival_std": r["accuracy_std"], "gap_points": gap, "within_1_point": bool(gap >= -1)})
    return pd.DataFrame(out)


def accuracy_table(df, order):
    """Accuracy per combination (mean over seeds); mean, worst and worst/RGB over the seven
    distinct combinations; rows in ``order``."""
    table = df.pivot_table(index="model", columns="combo", values="accuracy", sort=False)[TASK1_COMBOS]
    table["mean"] = table[DISTINCT].mean(axis=1)
    table["worst"] = table[DISTINCT].min(axis=1)
    table["worst/RGB"] = table["worst"] / table["RGB"]
    return table.reindex([name for name in order if name in table.index])


def task1_ablation(args, seeds):
    """Each mechanism alone and together (first seed)."""
    rows = [ROWS[n] for n in ABLATION_NAMES]
    df = task1_rows(args, [dataclasses.replace(r, every_seed=False) for r in rows], seeds[:1])
    table = accuracy_table(df[df.img_size == args.img_size], list(ABLATION_NAMES))
    for name in table.index:
        table.loc[name, "train min"] = train_seconds(args, ROWS[name], seeds[0]) / 60
    table.index = [f"{ABLATION_NAMES[n]} [{n}]" for n in table.index]
    title = (f"Task 1 ablation on {data_name(args)} test split, {args.backbone} backbone ({budget(args)}, "
             f"first seed; init rows: {FINETUNE['epochs']} epochs at LR {FINETUNE['lr']} after plain_zero's 6, "
             "whose time 'train min' includes; wall minutes from the runs' logs)")
    text = table.reset_index(names="mechanisms [row]").to_markdown(index=False, floatfmt=".4f")
    write_results(table.reset_index(names="row").to_dict("records"), args.results, "task1_ablation", title)
    paste(args, "task1-ablation", f"{title}\n\n{text}")
    print(text)


def task1_sandwich(args, seeds):
    """The sandwich's cost options (first seed): accuracy beside the cost of a training step
    against plain_zero's, on the small CNN and on DenseNet-121, from ``python -m bench --parts
    sandwich`` (results/bench/sandwich.json; a dash where it has not measured the option)."""
    rows = [ROWS["plain_zero"], *SANDWICH_ROWS]
    df = task1_rows(args, rows, seeds[:1])
    table = accuracy_table(df[df.img_size == args.img_size], [r.name for r in rows]).drop(columns="worst/RGB")
    for backbone in ("small", "densenet121"):
        table[f"step/plain_zero, {backbone}"] = [bench_step_ratio(args, ROWS[n], seeds[0], backbone)
                                                 for n in table.index]
    title = (f"Task 1 sandwich cost options on {data_name(args)} test split, {args.backbone} backbone "
             f"({budget(args)}, "
             "first seed); step/plain_zero: one optimizer step against plain_zero's, python -m bench --parts "
             "sandwich")
    write_results(table.reset_index(names="row").to_dict("records"), args.results, "task1_sandwich", title)
    text = markdown(table.reset_index(names="row"))
    paste(args, "task1-sandwich", f"{title}\n\n{text}")
    print(f"{title}\n\n{text}")


def bench_step_ratio(args, row, seed, backbone):
    """The bench's step cost, on ``backbone``, of the sandwich options ``row``'s run trained
    with; NaN for a row without the sandwich or an option the bench has not measured."""
    path = os.path.join(args.bench, "sandwich.json")
    run = ROWS[row.same_as] if row.same_as else row
    trained = load_checkpoint(os.path.join(run_dir(args, run, seed), "last.pt"))["args"]
    if trained["channel_aug"] != "sandwich" or not os.path.exists(path):
        return float("nan")
    options = [trained.get(f"sandwich_{k}", BEFORE_FLAG[f"sandwich_{k}"]) for k in ("fraction", "scale", "every")]
    for r in json.load(open(path)):
        if r["backbone"] == backbone and [r.get(k) for k in ("fraction", "scale", "every")] == options:
            return r["ratio_to_plain"]
    return float("nan")


def task1_resnet18(args, seeds):
    """dwg and plain_zero on ResNet-18 (first seed): the result is not an artefact of the small CNN."""
    df = task1_rows(args, RESNET18_ROWS, seeds[:1])
    table = accuracy_table(df[df.img_size == args.img_size], [r.name for r in RESNET18_ROWS])
    title = f"Task 1 on ResNet-18, {data_name(args)} test split ({budget(args)}, first seed)"
    text = table.reset_index(names="model").to_markdown(index=False, floatfmt=".4f")
    write_results(table.reset_index(names="model").to_dict("records"), args.results, "task1_resnet18", title)
    paste(args, "task1-resnet18", f"{title}\n\n{text}")
    print(text)


def train_seconds(args, row, seed):
    """Training time of a row's checkpoint from its log, plus that of the row it started from."""
    row = ROWS[row.same_as] if row.same_as else row
    log = pd.read_csv(os.path.join(run_dir(args, row, seed), "log.csv"))
    return log["seconds"].sum() + (train_seconds(args, ROWS[row.init], seed) if row.init else 0)


def task2(args, seeds):
    rows = []
    for seed in seeds:
        outs = [os.path.join(args.runs, "task2", f"{model}-s{seed}") for model in TASK2_MODELS]
        # --jobs at a time, as the sweep trains: on a CPU the thread count changes the arithmetic's
        # order, so the same recipe gives the same numbers in both tables only with the same --jobs.
        in_parallel(args.jobs, [functools.partial(train, "train_rrdb.py", out, ["--model", model, *recipe(args, seed)])
                                for model, out in zip(TASK2_MODELS, outs)])
        paths = [os.path.join(out, "best.pt") for out in outs]
        # The same recipe plus distillation from our own from-scratch ResNet34 (no pretrained weights).
        out = os.path.join(args.runs, "task2", f"shallow_kd-s{seed}")
        in_parallel(args.jobs, [functools.partial(train, "train_rrdb.py", out,
                                                  ["--model", "shallow", "--teacher", paths[0], *recipe(args, seed)])])
        paths.append(os.path.join(out, "best.pt"))
        ev = os.path.join(args.runs, "task2", f"eval-s{seed}")
        rows += [{**r, "seed": seed} for r in evaluate_side_by_side(args, ev, paths)]
    df = pd.DataFrame(rows)
    agg = mean_std(df, ["model", "layers", "params", "macs"],
                   ["accuracy", "precision", "recall", "f1", "ratio_to_baseline"])
    title = (f"Task 2 on {data_name(args)} test split ({budget(args)}); "
             "params/MACs at 3x224x224, layers of the deployed model")
    write_results(agg.to_dict("records"), args.results, "task2", title)
    fig, ax = plt.subplots(figsize=(6, 4))
    for _, r in agg.iterrows():
        ax.errorbar(r["macs"] / 1e9, r["accuracy"], yerr=r["accuracy_std"], fmt="o")
        ax.annotate(f"{r['model']} ({r['layers']} layers)", (r["macs"] / 1e9, r["accuracy"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("GMACs at 3x224x224")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Task 2: accuracy against MACs ({budget(args)})", fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(os.path.join(args.figs, "task2_acc_vs_macs.png"))
    cols = ["model", "layers", "params", "macs", "accuracy", "accuracy_std", "precision", "recall", "f1",
            "ratio_to_baseline", "seeds"]
    text = agg[cols].to_markdown(index=False, floatfmt=".4f")
    paste(args, "task2", f"{title}\n\n{text}")
    print(text)


SWEEP_MODELS = ["resnet34", "shallow", "shallow_deep"]


def saturation(accuracy_by_budget, gain=0.01):
    """The first budget after which doubling the epochs gains less than ``gain``; None if none does."""
    budgets = sorted(accuracy_by_budget)
    for low, high in zip(budgets, budgets[1:]):
        if high == 2 * low and accuracy_by_budget[high] - accuracy_by_budget[low] < gain:
            return low
    return None


def task2_sweep(args, seeds):
    """ResNet34 and the shallow nets at every budget of ``--budgets`` (first seed), side by side;
    then ``shallow`` distilled from the ResNet34 of the budget where it saturates (the longest
    budget when none does)."""
    seed, rows = seeds[0], []
    sweep_dir = os.path.join(args.runs, "task2-sweep")

    def run(model, epochs, *extra, name=None):
        out = os.path.join(sweep_dir, f"{name or model}-e{epochs}-s{seed}")
        return functools.partial(train, "train_rrdb.py", out,
                                 ["--model", model, *recipe(args, seed, epochs=epochs), *extra]), out

    def minutes(out):
        return pd.read_csv(os.path.join(out, "log.csv"))["seconds"].sum() / 60

    planned = {(m, e): run(m, e) for e in args.budgets for m in SWEEP_MODELS}
    if not args.no_train:
        in_parallel(args.jobs, [task for task, _ in planned.values()])
    # A sweep runs across sessions: a budget is reported once its ResNet34 has finished, and a
    # shallow model still training there is left blank rather than holding the row back.
    finished = {key: run_finished(out) for key, (_, out) in planned.items()}
    budgets = [e for e in args.budgets if finished[("resnet34", e)]]
    if not budgets:
        raise UserError(f"no budget of {args.budgets} has a finished resnet34 run under {args.runs}")
    for epochs in budgets:
        checkpoints = [os.path.join(planned[(m, epochs)][1], "best.pt")
                       for m in SWEEP_MODELS if finished[(m, epochs)]]
        ev = os.path.join(sweep_dir, f"eval-e{epochs}-s{seed}")
        rows += [{**r, "epochs": epochs, "minutes": minutes(planned[(r["model"], epochs)][1])}
                 for r in evaluate_side_by_side(args, ev, checkpoints)]
    df = pd.DataFrame(rows)
    # Saturation, and so the teacher, is judged on validation: the best val accuracy in each
    # ResNet34 run's log is that of the checkpoint it kept; the test split only reports.
    resnet_val = {e: pd.read_csv(os.path.join(planned[("resnet34", e)][1], "log.csv"))["val_acc"].max()
                  for e in budgets}
    saturated = saturation(resnet_val)
    # Without a saturated budget the longest ResNet34 is the best teacher the sweep has, and
    # distilling from it still says what distillation adds there.
    kd_epochs = saturated
    if kd_epochs is None and finished[("resnet34", max(args.budgets))]:
        kd_epochs = max(args.budgets)
    if kd_epochs is not None:
        teacher = os.path.join(planned[("resnet34", kd_epochs)][1], "best.pt")
        task, out = run("shallow", kd_epochs, "--teacher", teacher, name="shallow_kd")
        if not args.no_train:
            in_parallel(args.jobs, [task])  # the threads of every other run
    kd_done = kd_epochs is not None and run_finished(out)
    if kd_done:
        ev = os.path.join(sweep_dir, f"eval-kd-e{kd_epochs}-s{seed}")
        rows += [{**r, "epochs": kd_epochs, "minutes": minutes(out)}
                 for r in evaluate_side_by_side(args, ev, [teacher, os.path.join(out, "best.pt")])
                 if r["model"] != "resnet34"]
        df = pd.DataFrame(rows)
    table = df.pivot_table(index="epochs", columns="model", values="accuracy")
    models_run = list(table.columns)
    for m in table.columns.drop("resnet34"):
        table[f"{m} / resnet34"] = table[m] / table["resnet34"]
    table["resnet34 val"] = pd.Series(resnet_val)
    table = table.join(df.pivot_table(index="epochs", columns="model", values="minutes").add_suffix(" min"))
    verdict = (f"ResNet34 saturates at {saturated} epochs (doubling them gains under 1 point of validation "
               "accuracy)" if saturated else f"ResNet34 is not saturated within {budgets} epochs (no doubling "
               "gains under 1 point of validation accuracy)")
    if kd_epochs is not None:
        verdict += (f"; shallow+kd is distilled from the {kd_epochs}-epoch ResNet34" if kd_done
                    else f"; shallow+kd, distilled from the {kd_epochs}-epoch ResNet34, has not finished")
    title = (f"Task 2 budget sweep on {data_name(args)} test split "
             f"({machine(args)}: {args.img_size}px, batch {args.batch_size}, seed {seed}; "
             f"'min': training wall minutes from each run's log, under whatever else shared the cores); {verdict}")
    write_results(table.reset_index().to_dict("records"), args.results, "task2_sweep", title)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in models_run:
        ax.plot(table.index, table[m], marker="o", label=m)
    ax.set_xscale("log", base=2)
    ax.set_xticks(table.index, [str(e) for e in table.index])
    ax.minorticks_off()
    ax.set_xlabel("epochs")
    ax.set_ylabel("test accuracy")
    ax.set_title("Task 2: accuracy against training budget", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(os.path.join(args.figs, "task2_sweep.png"))
    text = markdown(table.reset_index().astype({"epochs": str}))
    paste(args, "task2-sweep", f"{title}\n\n{text}")
    print(f"{title}\n\n{text}")
    task2_headline(args)


def task2_headline(args):
    """The front page's Task 2 rows (ResNet34 and shallow at each budget), read from the sweep's
    table as written, so that they can be pasted again without its runs."""
    path = os.path.join(args.results, "task2_sweep")
    if not os.path.exists(path + ".json"):
        raise UserError(f"{path}.json: no Task 2 sweep table yet; run --part task2-sweep first")
    title = open(path + ".md").readline().strip()
    table = pd.DataFrame(json.load(open(path + ".json")))
    cols = [c for c in ["epochs", "resnet34", "shallow", "shallow+kd", "shallow / resnet34",
                        "shallow+kd / resnet34"] if c in table]
    paste(args, "task2-headline", f"{title}; test accuracy ([every model and the Task 2 table](docs/task2.md))"
          f"\n\n{markdown(table[cols].astype({'epochs': str}))}")


# The recipe options on the shallow net, each against the plain recipe. EMA decay 0.998 averages
# about 500 steps: a quarter of a 12-epoch run at batch 64 on imagenette-mini (148 steps an epoch),
# long enough to smooth the noise, short enough not to lag behind the end of the cosine schedule.
RECIPES = {"plain": [], "ema": ["--ema", "0.998"], "mixup+cutmix": ["--mixup", "0.2", "--cutmix", "1.0"]}


def task2_recipe(args, seeds):
    """``shallow`` trained with each of ``RECIPES`` at the budget of ``--epochs`` (first seed), all
    at once (``--jobs``), so that their minutes are measured under the same load."""
    seed = seeds[0]
    outs = {name: os.path.join(args.runs, "task2-recipe", f"shallow-{name}-e{args.epochs}-s{seed}")
            for name in RECIPES}
    if not args.no_train:
        in_parallel(args.jobs, [functools.partial(train, "train_rrdb.py", outs[name],
                                                  ["--model", "shallow", *recipe(args, seed), *flags])
                                for name, flags in RECIPES.items()])
    done = [name for name in RECIPES if run_finished(outs[name])]
    if "plain" not in done:
        raise UserError(f"{outs['plain']}: the plain recipe has not finished; run without --no-train")
    checkpoints = [os.path.join(outs[name], "best.pt") for name in done]
    evaluation = evaluate_side_by_side(args, os.path.join(args.runs, "task2-recipe", f"eval-e{args.epochs}-s{seed}"),
                                       checkpoints)
    rows = []
    for name, r in zip(done, evaluation):  # test_rrdb.py keeps the order of its checkpoints
        log = pd.read_csv(os.path.join(outs[name], "log.csv"))
        rows.append({"recipe": name, "flags": " ".join(RECIPES[name]) or "-", "accuracy": r["accuracy"],
                     "f1": r["f1"], "best val": log["val_acc"].max(), "minutes": log["seconds"].sum() / 60})
    table = pd.DataFrame(rows)
    table["minutes / plain"] = table["minutes"] / table.loc[table["recipe"] == "plain", "minutes"].iloc[0]
    one_seed = argparse.Namespace(**{**vars(args), "seeds": [seed]})
    title = (f"Task 2 recipe options: shallow on {data_name(args)} test split ({budget(one_seed)}; one run each, "
             f"{min(args.jobs, len(RECIPES))} at a time; 'minutes': training wall minutes from each run's log)")
    write_results(table.to_dict("records"), args.results, "task2_recipe", title)
    text = markdown(table)
    paste(args, "task2-recipe", f"{title}\n\n{text}")
    print(f"{title}\n\n{text}")


@cli
def main(argv=None):
    args = parse_args(argv)
    seeds = args.seeds
    os.makedirs(args.results, exist_ok=True)
    os.makedirs(args.figs, exist_ok=True)
    if args.part in ("task1", "all"):
        task1(args, seeds)
    if args.part in ("task1-ablation", "all"):
        task1_ablation(args, seeds)
    if args.part in ("task1-sandwich", "all"):
        task1_sandwich(args, seeds)
    if args.part in ("task1-resnet18", "all"):
        task1_resnet18(args, seeds)
    if args.part in ("task2", "all"):
        task2(args, seeds)
    if args.part == "task2-sweep":
        task2_sweep(args, seeds)
    if args.part == "task2-headline":
        task2_headline(args)
    if args.part == "task2-recipe":
        task2_recipe(args, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

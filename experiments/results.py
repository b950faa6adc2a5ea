"""Regenerate the README's result tables and figures on real photos (CPU proxy runs).

    python -m experiments.results [--part task1|task1-ablation|task1-resnet18|task2|task2-sweep|all]
                                  [--seeds 0,1,2] [--epochs 6] [--budgets 6,12,24,48] [--jobs 2] [--no-train]

Trains every row with the repository's own entry scripts (runs/results/<row>/, resumable: a
finished run is reused, an interrupted one resumed; ``--jobs`` runs at once, each with
cores/jobs threads), evaluates it with test_dw.py/test_rrdb.py (an evaluation newer than its
checkpoints is reused), and writes results/*.md|json, figs/task1_*.png, figs/task2_*.png and
the README's tables. ``--no-train`` makes the tables from the finished runs only (Task 1 rows;
sweep budgets whose ResNet34 has finished). Never run by CI, except the sweep's end-to-end
test at toy size.
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

from utils.checkpoint import load_checkpoint
from utils.errors import Parser, UserError, at_least, cli, int_list
from utils.report import bar_chart, markdown, plt, save_figure, update_readme, write_results

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
    backbone: str = "small"


# Starting from a trained RGB model: plain_zero's 6 epochs, then 3 epochs from its weights.
FINETUNE = {"epochs": 3, "lr": 0.03, "warmup-epochs": 0.3}
EARLIER = ["--no-stem-base", "--no-combo-bn"]  # the stem and shared BatchNorm of the earlier dwg
TASK1_ROWS = [  # in training order
    Row("dwg", "dwg"),
    Row("plain_zero", "plain_zero"),
    # plain_mean trains exactly as plain_zero does (RGB only; its fill acts only when a channel is
    # missing), so its row evaluates plain_zero's checkpoint instead of training a copy.
    Row("plain_mean", "plain_mean", same_as="plain_zero"),
    *[Row(f"plain_zero-{c}only", "plain_zero", ["--train-channels", c, "--val-combos", c], channel=c)
      for c in SINGLE],
    Row("dwg_finetune", "dwg", recipe=FINETUNE, init="plain_zero", every_seed=False),
    Row("dwg_earlier", "dwg", EARLIER + ["--channel-aug", "subset"], every_seed=False),
    # Equal training time: a sandwich step costs 2.7x a plain one on this machine (python -m bench
    # --parts sandwich, small backbone), so plain_zero gets 16 epochs against dwg's 6.
    Row("plain_zero-16ep", "plain_zero", recipe={"epochs": 16}, every_seed=False),
    Row("plain_dropout", "plain_dropout", every_seed=False),
    Row("seed_dwg", "seed_dwg", every_seed=False),
    # The sandwich rule trains the smallest network every step; here there are three (R, G, B).
    Row("dwg_all_singles", "dwg", ["--sandwich-all-singles"]),
]
SIZE_ROWS = {"dwg", "plain_zero", "plain_mean"}  # the spatial-size table's rows
TABLE_ORDER = ["dwg", "dwg_all_singles", "dwg_finetune", "dwg_earlier", "plain_zero", "plain_zero-16ep", "plain_mean", "plain_dropout", "seed_dwg"]
# Each mechanism alone and together, first seed only; rows of TASK1_ROWS complete the table.
ABLATION_ROWS = [
    Row("earlier+bn", "dwg", same_as="dwg_earlier", eval_flags=["--recalibrate", "640"]),
    Row("base", "dwg", ["--no-combo-bn", "--channel-aug", "subset"]),
    Row("base+bn", "dwg", same_as="base", eval_flags=["--recalibrate", "640"]),
    Row("base+init", "dwg", ["--no-combo-bn", "--channel-aug", "subset"], recipe=FINETUNE, init="plain_zero"),
    Row("base+init+bn", "dwg", same_as="base+init", eval_flags=["--recalibrate", "640"]),
    Row("base+init+sandwich", "dwg", ["--no-combo-bn"], recipe=FINETUNE, init="plain_zero"),
    Row("dwg+affine", "dwg", ["--combo-affine"], every_seed=False),
]
ABLATION_NAMES = {
    "dwg_earlier": "earlier dwg: template stem, subset sampling, shared BN",
    "earlier+bn": "earlier dwg + BN statistics per set (recalibrated)",
    "base": "base kernels (subset sampling, shared BN)",
    "base+bn": "base + BN per set (recalibrated)",
    "base+init": "base, initialised from plain_zero (subset sampling)",
    "base+init+bn": "base, init + BN per set (recalibrated)",
    "base+init+sandwich": "base, init + sandwich",
    "dwg_finetune": "base, init + sandwich + BN per set",
    "dwg": "base + sandwich + BN per set, from scratch (dwg)",
    "dwg+affine": "dwg + BN scale and shift per set",
}
# A body other than the small CNN, first seed only.
RESNET18_ROWS = [Row("plain_zero-resnet18", "plain_zero", backbone="resnet18"),
                 Row("dwg-resnet18", "dwg", backbone="resnet18")]
ROWS = {r.name: r for r in TASK1_ROWS + ABLATION_ROWS + RESNET18_ROWS}
TASK2_MODELS = ["resnet34", "rrdb", "rrdb_rnn", "shallow"]
SIZES = [48, 64, 96]


def parse_args(argv):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="all",
                   choices=["task1", "task1-ablation", "task1-resnet18", "task2", "task2-sweep", "all"])
    p.add_argument("--budgets", default="6,12,24,48", type=int_list(1), help="task2-sweep: epochs per run")
    p.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data/imagenette-mini"))
    p.add_argument("--seeds", default="0", type=int_list(0))
    p.add_argument("--epochs", type=at_least(1), default=6)
    p.add_argument("--img-size", type=at_least(8), default=64)
    p.add_argument("--batch-size", type=at_least(1), default=64)
    p.add_argument("--workers", type=at_least(0), default=1)
    p.add_argument("--no-train", action="store_true",
                   help="tables from the finished runs only: Task 1 rows; sweep budgets whose ResNet34 has finished, "
                        "a shallow run still training shown as a dash")
    p.add_argument("--jobs", type=at_least(1), default=1,
                   help="runs trained (and evaluated) at once, each with cores/jobs threads")
    p.add_argument("--runs", default="runs/results", help="checkpoints and logs (not committed)")
    p.add_argument("--results", default="results")
    p.add_argument("--figs", default="figs")
    p.add_argument("--readme", default="README.md", help="the file whose marked tables are replaced")
    return p.parse_args(argv)


def sh(*cmd, threads=None):
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    subprocess.run([sys.executable, *cmd], check=True, env=env)


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
              "batch-size": args.batch_size, "workers": args.workers, "seed": seed, **overrides}
    return [item for k, v in values.items() for item in (f"--{k}", str(v))]


def in_parallel(jobs, tasks):
    """Run ``tasks`` (callables taking a thread count) ``jobs`` at a time, in order; re-raise the
    first failure."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ThreadPoolExecutor(jobs) as pool:
        for f in [pool.submit(task, threads=threads) for task in tasks]:
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
        flags = ["--model", row.model, "--backbone", row.backbone, *row.flags]
        if row.init:
            done[(row.init, seed)].wait()
            flags += ["--init-from", os.path.join(run_dir(args, ROWS[row.init], seed), "best.pt")]
        try:
            train("train_dw.py", run_dir(args, row, seed), recipe(args, seed, **row.recipe), *flags,
                  threads=threads)
        finally:
            done[(name, seed)].set()
    in_parallel(args.jobs, [functools.partial(train_row, *key) for key in order])


def task1_rows(args, rows, seeds):
    """Train (``train_rows``) and evaluate ``rows``; -> DataFrame of evaluation rows."""
    wanted = schedule(rows, seeds)
    if args.no_train:
        wanted = [(r, s) for r, s in wanted if finished(args, r, s)]
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
        if not is_newer(os.path.join(ev, "results.json"), best):
            sizes = sorted({*SIZES, args.img_size}) if row.name in SIZE_ROWS else [args.img_size]
            tasks.append(functools.partial(
                sh, "test_dw.py", "--checkpoint", best, "--as-model", row.model, "--data-root", args.data_root,
                "--combos", row.channel or ",".join(TASK1_COMBOS), "--img-sizes", ",".join(map(str, sizes)),
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


def evaluate_side_by_side(args, ev, checkpoints):
    """test_rrdb.py on ``checkpoints`` side by side into ``ev``, unless an evaluation of exactly
    these is newer than all of them."""
    path = os.path.join(ev, "results.json")
    if all(is_newer(path, c) for c in checkpoints):
        done = json.load(open(path))
        if [r["checkpoint"] for r in done] == checkpoints:
            return done
    sh("test_rrdb.py", "--checkpoints", *checkpoints, "--data-root", args.data_root,
       "--workers", str(args.workers), "--out", ev)
    return json.load(open(path))


def budget(args):
    return (f"{args.epochs} epochs, {args.img_size}px, batch {args.batch_size}, seed(s) {args.seeds}, "
            f"{os.cpu_count()}-core CPU")


def mean_std(df, keys, values):
    g = df.groupby(keys, sort=False)[values]
    out = g.mean()
    std = g.std(ddof=0).add_suffix("_std")
    return pd.concat([out, std], axis=1).reset_index().assign(seeds=g.size().values)


def task1(args, seeds):
    df = task1_rows(args, TASK1_ROWS, seeds)
    metrics = ["accuracy", "precision", "recall", "f1", "f1_macro"]
    agg = mean_std(df, ["model", "img_size", "combo"], metrics)
    main = agg[agg.img_size == args.img_size]
    experts = main[main.model.str.contains("only")]
    title = f"Task 1 on imagenette-mini test split, small backbone (CPU proxy: {budget(args)})"
    write_results(main.to_dict("records"), args.results, "task1", title)
    means = accuracy_table(main, TABLE_ORDER)
    stds = main.pivot_table(index="model", columns="combo", values="accuracy_std", sort=False)
    for _, e in experts.iterrows():
        means.loc["single-channel expert", e["combo"]] = e["accuracy"]
        stds.loc["single-channel expert", e["combo"]] = e["accuracy_std"]
    seeds_of = main.groupby("model")["seeds"].max().to_dict()
    seeds_of["single-channel expert"] = "/".join(str(experts.set_index("combo").loc[c, "seeds"]) for c in SINGLE
                                                 if c in set(experts["combo"]))
    shown = means.copy().astype(object)
    for model in means.index:
        for combo in TASK1_COMBOS:
            m = means.loc[model, combo]
            several = str(seeds_of.get(model, 1)) != "1" and not pd.isna(m)
            shown.loc[model, combo] = f"{m:.3f} ± {stds.loc[model, combo]:.3f}" if several else (
                "" if pd.isna(m) else f"{m:.3f}")
    shown["seeds"] = [seeds_of.get(m, 1) for m in means.index]
    shown = shown.reset_index(names="model")
    write_results(means.reset_index(names="model").to_dict("records"), args.results, "task1_accuracy",
                  title + "; accuracy per combination (mean over seeds)")
    targets = task1_targets(means, stds)
    write_results(targets.to_dict("records"), args.results, "task1_targets", title + "; targets")
    sizes = agg[agg.model.isin(SIZE_ROWS)].pivot_table(index=["model", "combo"], columns="img_size",
                                                             values="accuracy", sort=False).reset_index()
    sizes.columns = [str(c) if isinstance(c, int) else c for c in sizes.columns]
    write_results(sizes.to_dict("records"), args.results, "task1_sizes",
                  f"Task 1 spatial-size invariance: accuracy of the {args.img_size}px checkpoints at "
                  f"{', '.join(map(str, SIZES))}px ({budget(args)})")
    bar_chart(main[~main.model.str.contains("only")], "combo", "accuracy", "model",
              os.path.join(args.figs, "task1_accuracy.png"),
              f"Task 1: test accuracy per channel combination (CPU proxy: {budget(args)})")
    text = shown.to_markdown(index=False, floatfmt=".4f")
    update_readme("task1", f"{title}; test accuracy as a fraction, mean ± standard deviation over the seeds "
                  f"where a row has several\n\n{text}\n\nTargets (means over the seeds):\n\n"
                  f"{targets.to_markdown(index=False, floatfmt='.4f')}\n\nSpatial-size invariance "
                  f"(same checkpoints, accuracy, mean over seeds):\n\n"
                  f"{sizes.to_markdown(index=False, floatfmt='.4f')}", args.readme)
    print(text)


def task1_targets(means, stds, candidates=("dwg", "dwg_all_singles")):
    """Each channel-adaptive candidate against plain_zero on RGB and against each single-channel
    expert: gap and target (1 point)."""
    rows = [("RGB", "plain_zero")] + [(c, "single-channel expert") for c in SINGLE]
    out = []
    for model in [m for m in candidates if m in means.index]:
        for combo, rival in rows:
            gap = means.loc[model, combo] - means.loc[rival, combo]
            out.append({"model": model, "combo": combo, "accuracy": means.loc[model, combo],
                        "std": stds.loc[model, combo], "rival": rival, "rival_accuracy": means.loc[rival, combo],
                        "rival_std": stds.loc[rival, combo], "gap_points": 100 * gap,
                        "target_met": bool(gap >= -0.01)})
    return pd.DataFrame(out)


def accuracy_table(df, order):
    """Accuracy per combination (mean over seeds), mean, worst and worst/RGB, rows in ``order``."""
    table = df.pivot_table(index="model", columns="combo", values="accuracy", sort=False)[TASK1_COMBOS]
    table["mean"] = table[TASK1_COMBOS].mean(axis=1)
    table["worst"] = table[TASK1_COMBOS].min(axis=1)
    table["worst/RGB"] = table["worst"] / table["RGB"]
    return table.reindex([name for name in order if name in table.index])


def task1_ablation(args, seeds):
    """Each mechanism alone and together (first seed, small backbone)."""
    rows = [ROWS[n] for n in ABLATION_NAMES]
    df = task1_rows(args, [dataclasses.replace(r, every_seed=False) for r in rows], seeds[:1])
    table = accuracy_table(df[df.img_size == args.img_size], list(ABLATION_NAMES))
    for name in table.index:
        table.loc[name, "train min"] = train_seconds(args, ROWS[name], seeds[0]) / 60
    table.index = [f"{ABLATION_NAMES[n]} [{n}]" for n in table.index]
    title = (f"Task 1 ablation on imagenette-mini test split, small backbone (CPU proxy: {budget(args)}, "
             f"first seed; init rows: {FINETUNE['epochs']} epochs at LR {FINETUNE['lr']} after plain_zero's 6, "
             "whose time 'train min' includes; times are wall minutes with two runs sharing the 2 cores)")
    text = table.reset_index(names="mechanisms [row]").to_markdown(index=False, floatfmt=".4f")
    write_results(table.reset_index(names="row").to_dict("records"), args.results, "task1_ablation", title)
    update_readme("task1-ablation", f"{title}\n\n{text}", args.readme)
    print(text)


def task1_resnet18(args, seeds):
    """dwg and plain_zero on ResNet-18 (first seed): the result is not an artefact of the small CNN."""
    df = task1_rows(args, RESNET18_ROWS, seeds[:1])
    table = accuracy_table(df[df.img_size == args.img_size], [r.name for r in RESNET18_ROWS])
    title = f"Task 1 on ResNet-18, imagenette-mini test split (CPU proxy: {budget(args)}, first seed)"
    text = table.reset_index(names="model").to_markdown(index=False, floatfmt=".4f")
    write_results(table.reset_index(names="model").to_dict("records"), args.results, "task1_resnet18", title)
    update_readme("task1-resnet18", f"{title}\n\n{text}", args.readme)
    print(text)


def train_seconds(args, row, seed):
    """Training time of a row's checkpoint from its log, plus that of the row it started from."""
    row = ROWS[row.same_as] if row.same_as else row
    log = pd.read_csv(os.path.join(run_dir(args, row, seed), "log.csv"))
    return log["seconds"].sum() + (train_seconds(args, ROWS[row.init], seed) if row.init else 0)


def task2(args, seeds):
    rows = []
    for seed in seeds:
        paths = []
        for model in TASK2_MODELS:
            out = os.path.join(args.runs, "task2", f"{model}-s{seed}")
            train("train_rrdb.py", out, ["--model", model, *recipe(args, seed)])
            paths.append(os.path.join(out, "best.pt"))
        # The same recipe plus distillation from our own from-scratch ResNet34 (no pretrained weights).
        out = os.path.join(args.runs, "task2", f"shallow_kd-s{seed}")
        train("train_rrdb.py", out, ["--model", "shallow", "--teacher", paths[0], *recipe(args, seed)])
        paths.append(os.path.join(out, "best.pt"))
        ev = os.path.join(args.runs, "task2", f"eval-s{seed}")
        rows += [{**r, "seed": seed} for r in evaluate_side_by_side(args, ev, paths)]
    df = pd.DataFrame(rows)
    agg = mean_std(df, ["model", "layers", "params", "macs"],
                   ["accuracy", "precision", "recall", "f1", "ratio_to_baseline"])
    title = (f"Task 2 on imagenette-mini test split (CPU proxy: {budget(args)}); "
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
    update_readme("task2", f"{title}\n\n{text}", args.readme)
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
    resnet = df[df.model == "resnet34"].set_index("epochs")["accuracy"].to_dict()
    saturated = saturation(resnet)
    # Without a saturated budget the longest ResNet34 is the best teacher the sweep has, and
    # distilling from it still says what distillation adds there.
    kd_epochs = saturated
    if kd_epochs is None and finished[("resnet34", max(args.budgets))]:
        kd_epochs = max(args.budgets)
    if kd_epochs is not None:
        teacher = os.path.join(planned[("resnet34", kd_epochs)][1], "best.pt")
        task, out = run("shallow", kd_epochs, "--teacher", teacher, name="shallow_kd")
        if not args.no_train:
            task(threads=None)
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
    table = table.join(df.pivot_table(index="epochs", columns="model", values="minutes").add_suffix(" min"))
    verdict = (f"ResNet34 saturates at {saturated} epochs (doubling them gains under 1 point)" if saturated
               else f"ResNet34 is not saturated within {budgets} epochs (no doubling that gains under 1 point)")
    if kd_epochs is not None:
        verdict += (f"; shallow+kd is distilled from the {kd_epochs}-epoch ResNet34" if kd_done
                    else f"; shallow+kd, distilled from the {kd_epochs}-epoch ResNet34, has not finished")
    title = (f"Task 2 budget sweep on {os.path.basename(os.path.normpath(args.data_root))} test split "
             f"(CPU proxy: {args.img_size}px, batch {args.batch_size}, seed {seed}, {os.cpu_count()}-core CPU; "
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
    update_readme("task2-sweep", f"{title}\n\n{text}", args.readme)
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
    if args.part in ("task1-resnet18", "all"):
        task1_resnet18(args, seeds)
    if args.part in ("task2", "all"):
        task2(args, seeds)
    if args.part == "task2-sweep":
        task2_sweep(args, seeds)


if __name__ == "__main__":
    main()

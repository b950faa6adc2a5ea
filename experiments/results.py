"""Regenerate the README's result tables and figures on real photos (CPU proxy runs).

    python -m experiments.results [--part task1|task2|all] [--seeds 0,1,2] [--epochs 6]

Trains every row with the repository's own entry scripts (runs/results/<row>/, resumable: a
finished run is reused, an interrupted one resumed), evaluates it with test_dw.py/test_rrdb.py,
and writes results/task1*.md|json and results/task2.md|json, figs/task1_*.png, figs/task2_*.png.
Never run by the tests or CI.
"""
import argparse
import json
import os
import subprocess
import sys

import pandas as pd

from utils.checkpoint import load_checkpoint
from utils.errors import UserError, cli
from utils.report import bar_chart, plt, save_figure, update_readme, write_results

TASK1_MODELS = ["dwg", "plain_zero", "plain_mean", "plain_dropout", "seed_dwg"]
TASK1_COMBOS = ["RGB", "RG", "RB", "GB", "R", "G", "B", "BGR"]
SINGLE = ["R", "G", "B"]
# (row name, model, single training channel, extra flags)
TASK1_RUNS = ([(m, m, None, []) for m in TASK1_MODELS]
              + [("dwg_full50", "dwg", None, ["--full-prob", "0.5"])]
              + [(f"plain_zero-{c}only", "plain_zero", c, []) for c in SINGLE])
# plain_mean trains exactly as plain_zero does (RGB only; its fill acts only when a channel is
# missing), so its row evaluates plain_zero's checkpoint instead of training a copy.
SAME_TRAINING = {"plain_mean": "plain_zero"}
TASK2_MODELS = ["resnet34", "rrdb", "rrdb_rnn", "shallow"]
SIZES = [48, 64, 96]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", default="all", choices=["task1", "task2", "all"])
    p.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "../shared/data/imagenette-mini"))
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--runs", default="runs/results", help="checkpoints and logs (not committed)")
    p.add_argument("--results", default="results")
    p.add_argument("--figs", default="figs")
    return p.parse_args(argv)


def sh(*cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], check=True)


def train(script, out, common, *extra):
    """Train unless a finished run is already there; resume an unfinished one."""
    last = os.path.join(out, "last.pt")
    if os.path.exists(last):
        done = load_checkpoint(last)
        check_same_recipe(done, common)
        if done["epoch"] >= done["args"]["epochs"] and done["step"] == 0:
            return
        sh(script, "--resume", out)
    else:
        sh(script, *common, *extra, "--out", out, "--overwrite")


def recipe(args, seed):
    """The flags every row shares: one budget for all."""
    return ["--data-root", args.data_root, "--epochs", str(args.epochs), "--img-size", str(args.img_size),
            "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--seed", str(seed)]


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


def budget(args):
    return (f"{args.epochs} epochs, {args.img_size}px, batch {args.batch_size}, seed(s) {args.seeds}, "
            f"{os.cpu_count()}-core CPU")


def mean_std(df, keys, values):
    g = df.groupby(keys, sort=False)[values]
    out = g.mean()
    std = g.std(ddof=0).add_suffix("_std")
    return pd.concat([out, std], axis=1).reset_index().assign(seeds=g.size().values)


def task1(args, seeds):
    rows = []
    for seed in seeds:
        for name, model, channel, extra in TASK1_RUNS:
            out = os.path.join(args.runs, "task1", f"{name}-s{seed}")
            trained = os.path.join(args.runs, "task1", f"{SAME_TRAINING.get(name, name)}-s{seed}")
            common = ["--model", model, "--backbone", "small", *recipe(args, seed)]
            if channel:
                extra = ["--train-channels", channel, "--val-combos", channel]
            if name not in SAME_TRAINING:
                train("train_dw.py", out, common, *extra)
            ev, best = os.path.join(out, "eval"), os.path.join(trained, "best.pt")
            if not is_newer(os.path.join(ev, "results.json"), best):
                sh("test_dw.py", "--checkpoint", best, "--as-model", model, "--data-root", args.data_root,
                   "--combos", channel or ",".join(TASK1_COMBOS), "--img-sizes",
                   str(args.img_size) if channel else ",".join(map(str, SIZES)),
                   "--workers", str(args.workers), "--out", ev)
            for r in json.load(open(os.path.join(ev, "results.json"))):
                rows.append({**r, "model": name, "seed": seed})
    df = pd.DataFrame(rows)
    metrics = ["accuracy", "precision", "recall", "f1", "f1_macro"]
    agg = mean_std(df, ["model", "img_size", "combo"], metrics)
    main = agg[(agg.img_size == args.img_size)]
    main_rows = main[~main.model.str.contains("only")]
    title = f"Task 1 on imagenette-mini test split, small backbone (CPU proxy: {budget(args)})"
    write_results(main_rows.to_dict("records"), args.results, "task1", title)
    table = main_rows.pivot(index="model", columns="combo", values="accuracy")[TASK1_COMBOS]
    table["mean"] = table[TASK1_COMBOS].mean(axis=1)
    table["worst"] = table[TASK1_COMBOS].min(axis=1)
    table["worst/RGB"] = table["worst"] / table["RGB"]
    bounds = main[main.model.str.contains("only")]
    for _, b in bounds.iterrows():
        table.loc["single-channel upper bound", b["combo"]] = b["accuracy"]
    table = table.reindex([n for n, *_ in TASK1_RUNS if "only" not in n] + ["single-channel upper bound"])
    table = table.reset_index()
    write_results(table.to_dict("records"), args.results, "task1_accuracy", title + "; accuracy per combination")
    sizes = agg[~agg.model.str.contains("only")].pivot_table(index=["model", "combo"], columns="img_size",
                                                             values="accuracy", sort=False).reset_index()
    sizes.columns = [str(c) if isinstance(c, int) else c for c in sizes.columns]
    write_results(sizes.to_dict("records"), args.results, "task1_sizes",
                  f"Task 1 spatial-size invariance: accuracy of the {args.img_size}px checkpoints at "
                  f"{', '.join(map(str, SIZES))}px ({budget(args)})")
    bar_chart(main_rows, "combo", "accuracy", "model", os.path.join(args.figs, "task1_accuracy.png"),
              f"Task 1: test accuracy per channel combination (CPU proxy: {budget(args)})")
    text = table.to_markdown(index=False, floatfmt=".4f")
    update_readme("task1", f"{title}; accuracy as a fraction\n\n{text}\n\nSpatial-size invariance "
                  f"(same checkpoints, accuracy):\n\n{sizes.to_markdown(index=False, floatfmt='.4f')}")
    print(text)


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
        sh("test_rrdb.py", "--checkpoints", *paths, "--data-root", args.data_root, "--workers",
           str(args.workers), "--out", ev)
        rows += [{**r, "seed": seed} for r in json.load(open(os.path.join(ev, "results.json")))]
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
    update_readme("task2", f"{title}\n\n{text}")
    print(text)


@cli
def main(argv=None):
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.results, exist_ok=True)
    os.makedirs(args.figs, exist_ok=True)
    if args.part in ("task1", "all"):
        task1(args, seeds)
    if args.part in ("task2", "all"):
        task2(args, seeds)


if __name__ == "__main__":
    main()

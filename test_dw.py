"""Evaluate a Task 1 checkpoint on every channel combination (and image size); print and save tables."""
import argparse
import os
import sys

import numpy as np
import pandas as pd

from data import DEFAULT_COMBOS, describe_root, parse_combo_list
from engine import evaluate_split, recalibrate
from data.loaders import DECODE, DECODE_HELP, default_workers
from utils import distributed
from utils.checkpoint import load_model
from utils.complexity import complexity_row, stem_cost
from utils.errors import Parser, at_least, cli, int_list, non_empty
from utils.metrics import per_class_accuracy
from utils.report import bar_chart, confusion_figure, fmt_table, write_results

METRICS = ["accuracy", "top5", "precision", "recall", "f1", "f1_macro"]


def parse_args(argv):
    p = Parser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt / last.pt, or a run folder")
    p.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "."))
    p.add_argument("--as-model", default=None,
                   help="evaluate the weights as this model, e.g. a plain_zero checkpoint as plain_mean "
                        "(they train identically; the fill rule acts only when channels are missing)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--combos", default=",".join(DEFAULT_COMBOS), type=non_empty)
    p.add_argument("--img-sizes", default=None, type=int_list(8), help="comma-separated (default: the training size)")
    p.add_argument("--out", default=None, help="results folder (default: <run folder>/eval)")
    p.add_argument("--batch-size", type=at_least(1), default=128)
    p.add_argument("--workers", type=at_least(0), default=default_workers())
    p.add_argument("--decode", default="workers", choices=DECODE, help=DECODE_HELP)
    p.add_argument("--limit", type=at_least(1), default=None, help="evaluate this many images (evenly spaced)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--complexity", action="store_true", help="also print params/MACs/memory at 3x224x224")
    p.add_argument("--recalibrate", type=at_least(0), default=0, metavar="N",
                   help="first re-estimate BatchNorm statistics per channel set from N training images")
    return p.parse_args(argv)


def summary_rows(df):
    """Mean and worst combination per image size."""
    rows = []
    for size, part in df.groupby("img_size", sort=False):
        worst = part.loc[part["accuracy"].idxmin()]
        rows.append({"img_size": size, "mean_accuracy": part["accuracy"].mean(), "mean_f1": part["f1"].mean(),
                     "worst_combo": worst["combo"], "worst_accuracy": worst["accuracy"]})
    return pd.DataFrame(rows)


def per_class_table(predictions, classes):
    """One row per (image size, class): its images and its accuracy under every combination."""
    rows = []
    for size, results in predictions.items():
        targets = next(iter(results.values()))[0]
        counts = np.bincount(targets, minlength=len(classes))
        accs = {c: per_class_accuracy(t, top[:, 0], len(classes)) for c, (t, top) in results.items()}
        rows += [{"img_size": size, "class": i, "name": name, "images": int(counts[i]),
                  **{c: a[i] for c, a in accs.items()}} for i, name in enumerate(classes)]
    return pd.DataFrame(rows)


def class_losses(per_class, combos, full="RGB", top=5):
    """The classes that lose most when channels are missing: accuracy on ``full`` minus the mean
    over the reduced combinations (first image size), largest first."""
    part = per_class[per_class.img_size == per_class.img_size.iloc[0]]
    reduced = [c for c in combos if set(c) != set(full)]
    if full not in part or not reduced:
        return pd.DataFrame()
    table = part[["class", "name", full]].copy()
    table["reduced_mean"] = part[reduced].mean(axis=1)
    table["loss"] = table[full] - table["reduced_mean"]
    table["worst_combo"] = part[reduced].idxmin(axis=1)
    table["worst"] = part[reduced].min(axis=1)
    return table.sort_values("loss", ascending=False).head(top)


def write_confusions(predictions, df, classes, out, title):
    """Confusion matrices at the first image size: the full set's and the worst combination's."""
    size = df.img_size.iloc[0]
    part = df[df.img_size == size]
    wanted = dict.fromkeys(c for c in ("RGB", part.loc[part.accuracy.idxmin(), "combo"]) if c in predictions[size])
    paths = []
    for combo in wanted:
        targets, top = predictions[size][combo]
        paths.append(os.path.join(out, f"confusion_{combo}.png"))
        confusion_figure(targets, top[:, 0], classes, paths[-1], f"{title}: {combo} at {size}px (row-normalised)")
    return paths


def print_complexity(model, model_name):
    row = complexity_row(model)
    print(f"\ncomplexity of {model_name} at 3x224x224: {row['params'] / 1e6:.3f} M params, "
          f"{row['macs'] / 1e9:.3f} GMACs, {row['flops'] / 1e9:.3f} GFLOPs, "
          f"fwd/bwd {row['fwd_bwd_mb']:.1f} MB, {row['layers']} weighted layers")
    costs = [stem_cost(model, combo) for combo in ("RGB", "RG", "R")]
    print("stem against a plain convolution of the same shape (MACs at 224 px):")
    print(pd.DataFrame(costs).to_markdown(index=False))
    return row, costs


@cli
def main(argv=None):
    args = parse_args(argv)
    ctx = distributed.init(args.device)
    spec = describe_root(args.data_root)
    ckpt, model = load_model(args.checkpoint, spec.classes, args.as_model)
    model = model.to(ctx.device)
    combos = parse_combo_list(args.combos, getattr(model, "vocab", "RGB"))
    if args.recalibrate:
        recalibrate(model, spec, ckpt["args"]["img_size"], args.recalibrate, ctx, args.batch_size, args.workers,
                    args.decode)
    sizes = args.img_sizes or [ckpt["args"]["img_size"]]
    rows, predictions = [], {}
    for size in sizes:
        size_rows, predictions[size] = evaluate_split(model, spec, args.split, size, combos, ctx,
                                                      args.batch_size, args.workers, args.limit,
                                                      decode=args.decode)
        rows += size_rows
    if not ctx.main:
        return 0
    for r in rows:
        r.update(model=ckpt["model"], checkpoint=ckpt["path"])
    out = args.out or os.path.join(os.path.dirname(ckpt["path"]), "eval")
    df = write_results(rows, out, title=f"{ckpt['model']} on {spec.name}, {args.split} split")
    summary = summary_rows(df)
    print(f"\n{ckpt['model']} ({ckpt['config']}) on {spec.name}, {args.split} split, {rows[0]['images']} images")
    print(fmt_table(df[["combo", "img_size", *METRICS]], percent=METRICS, digits=2))
    print(fmt_table(summary, percent=["mean_accuracy", "mean_f1", "worst_accuracy"], digits=2))
    bar_chart(df, "combo", "accuracy", "img_size", os.path.join(out, "accuracy_by_combo.png"),
              f"{ckpt['model']}: {args.split} accuracy per channel combination ({spec.name})")
    per_class = per_class_table(predictions, spec.classes)
    per_class.to_csv(os.path.join(out, "per_class.csv"), index=False, float_format="%.4f")
    losers = class_losses(per_class, combos)
    if len(losers):
        print(f"\nclasses that lose most without every channel (accuracy on RGB minus the mean over "
              f"{', '.join(c for c in combos if set(c) != set('RGB'))}; {df.img_size.iloc[0]}px):")
        print(fmt_table(losers, percent=["RGB", "reduced_mean", "loss", "worst"], digits=2))
    confusions = write_confusions(predictions, df, spec.classes, out, ckpt["model"])
    if args.complexity:
        row, costs = print_complexity(model, ckpt["model"])
        write_results([row], out, stem="complexity")
        write_results(costs, out, stem="stem_cost")
    print(f"\nwrote {out}/results.json, .csv, .md, accuracy_by_combo.png, per_class.csv, "
          f"{', '.join(os.path.basename(p) for p in confusions)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

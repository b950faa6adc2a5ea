"""Evaluate Task 1 checkpoints on every channel combination (and image size); print and save tables.

    python test_dw.py --checkpoint runs/dwg              # one model: <run>/eval-test/
    python test_dw.py --checkpoints runs/dwg runs/plain_zero runs/plain_zero-Ronly
                                                         # one table, gap to the first: <first run>/compare-test/

The data is the checkpoint's own unless --data-root names other data. Accuracies, precision,
recall and F1 are fractions (0-1) in every printout and file. The output folder is replaced whole.
"""
import os
import sys

import numpy as np
import pandas as pd

from data import DEFAULT_COMBOS, DEFAULT_VOCAB, combo_name, default_combos, describe_root, parse_combo, parse_combo_list
from data.loaders import default_workers
from engine import evaluate_split
from flags import add_data_root, add_decode, add_device, add_limit, add_no_ema, add_workers
from models.loading import admit_bands, check_distinct, load_model
from models.registry import model_task
from utils import distributed
from utils.checkpoint import data_root, image_size, load_checkpoint
from utils.complexity import complexity_row, stem_cost
from utils.errors import MAX_IMG_SIZE, Parser, UserError, at_least, cli, int_list, non_empty
from utils.files import write_folder
from utils.metrics import per_class_accuracy
from utils.report import bar_chart, confusion_figure, fmt_table, heatmap, write_results

METRICS = ["accuracy", "top5", "precision", "recall", "f1", "f1_macro"]


def parse_args(argv):
    p = Parser(description=__doc__)
    p.add_argument("--checkpoints", "--checkpoint", nargs="+", required=True,
                   help="best.pt / last.pt, or run folders (their best.pt); several make one table")
    add_data_root(p, "the first checkpoint's data")
    p.add_argument("--as-model", default=None,
                   help="evaluate the weights as this model, e.g. a plain_zero checkpoint as plain_mean "
                        "(they train identically; the fill rule acts only when channels are missing)")
    add_no_ema(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--combos", default=None, type=non_empty,
                   help="comma-separated channel sets, names joined by '+' (B04+B03+B02), 'all', 'all-B10' "
                        f"(default: {','.join(DEFAULT_COMBOS)} for photos; for other bands all, RGB, each band "
                        "alone and each left out)")
    p.add_argument("--img-sizes", default=None, type=int_list(8, MAX_IMG_SIZE),
                   help="comma-separated (default: the training size)")
    p.add_argument("--out", default=None,
                   help="results folder, replaced whole (default: <run folder>/eval-<split>, "
                        "eval-as-<model>-<split> with --as-model, or <first run folder>/compare-<split> for "
                        "several checkpoints)")
    p.add_argument("--batch-size", type=at_least(1), default=128)
    add_workers(p, default_workers(), "loader processes")
    add_decode(p)
    add_limit(p, "evaluate this many images (evenly spaced)")
    add_device(p)
    p.add_argument("--complexity", action="store_true", help="also print params/MACs/memory at 3x224x224")
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


def class_losses(per_class, combos, bands=tuple(DEFAULT_VOCAB), top=5):
    """The classes that lose most when channels are missing: accuracy on the full set minus the
    mean over the reduced combinations (first image size), largest first."""
    part = per_class[per_class.img_size == per_class.img_size.iloc[0]]
    part = part[part.images > 0]  # a class with no test image has no accuracy to lose
    full = next((c for c in combos if set(parse_combo(c, bands)) == set(bands)), None)
    reduced = [c for c in combos if set(parse_combo(c, bands)) != set(bands)]
    if full not in part or not reduced:
        return pd.DataFrame()
    table = part[["class", "name", full]].copy()
    table["reduced_mean"] = part[reduced].mean(axis=1)
    table["loss"] = table[full] - table["reduced_mean"]
    table["worst_combo"] = part[reduced].idxmin(axis=1)
    table["worst"] = part[reduced].min(axis=1)
    return table.sort_values("loss", ascending=False).head(top)


def top_confusions(predictions, classes, top=5):
    """The ``top`` most frequent mistakes of each (image size, combination), most frequent first:
    true class, predicted class, images and their share of the true class's images (a confusion
    figure of 50 classes cannot be read; this can)."""
    rows = []
    for size, results in predictions.items():
        for combo, (targets, preds) in results.items():
            counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
            np.add.at(counts, (targets, preds[:, 0]), 1)
            images = counts.sum(axis=1)
            np.fill_diagonal(counts, 0)
            order = np.argsort(-counts, axis=None, kind="stable")[:top]
            rows += [{"img_size": size, "combo": combo, "true": classes[t], "predicted": classes[p],
                      "count": int(counts[t, p]), "share": counts[t, p] / images[t]}
                     for t, p in zip(*np.unravel_index(order, counts.shape)) if counts[t, p]]
    return pd.DataFrame(rows, columns=["img_size", "combo", "true", "predicted", "count", "share"])


def write_confusions(predictions, df, classes, out, title):
    """Confusion matrices at the first image size: the full set's and the worst combination's."""
    size = df.img_size.iloc[0]
    part = df[df.img_size == size]
    wanted = dict.fromkeys(c for c in (part.combo.iloc[0], part.loc[part.accuracy.idxmin(), "combo"])
                           if c in predictions[size])
    paths = []
    for combo in wanted:
        targets, top = predictions[size][combo]
        paths.append(os.path.join(out, f"confusion_{combo}.png"))
        confusion_figure(targets, top[:, 0], classes, paths[-1], f"{title}: {combo} at {size}px (row-normalised)")
    return paths


def print_complexity(model, model_name):
    vocab = tuple(getattr(model, "vocab", "RGB"))
    row = complexity_row(model, vocab)
    print(f"\ncomplexity of {model_name} at {len(vocab)}x224x224: {row['params'] / 1e6:.3f} M params, "
          f"{row['macs'] / 1e9:.3f} GMACs, {row['flops'] / 1e9:.3f} GFLOPs, "
          f"fwd/bwd {row['fwd_bwd_mb']:.1f} MB, {row['layers']} weighted layers")
    costs = [{**stem_cost(model, vocab[:n]), "channels": combo_name(vocab[:n])}
             for n in dict.fromkeys((len(vocab), 2, 1)) if n <= len(vocab)]
    print("stem against a plain convolution of the same shape (MACs at 224 px):")
    print(pd.DataFrame(costs).to_markdown(index=False))
    return row, costs


def evaluate_checkpoint(path, spec, args, ctx):
    """-> (checkpoint, model, rows, {img_size: {combo: (targets, top-k)}}) on every combination."""
    ckpt, model = load_model(path, spec.classes, args.as_model, args.ema)
    if model_task(ckpt["model"]) != 1:
        raise UserError(f"{ckpt['path']} is a Task 2 model ({ckpt['model']!r}): evaluate it with test_rrdb.py")
    model = model.to(ctx.device)
    admit_bands(model, spec.bands, spec.wavelengths, ckpt["path"])
    combos = parse_combo_list(args.combos or ",".join(default_combos(spec.bands, spec.wavelengths)), spec.bands)
    rows, predictions = [], {}
    for size in args.img_sizes or [image_size(ckpt)]:
        size_rows, predictions[size] = evaluate_split(model, spec, args.split, size, combos, ctx,
                                                      args.batch_size, args.workers, args.limit,
                                                      decode=args.decode)
        rows += size_rows
    for r in rows:
        r.update(model=ckpt["model"], checkpoint=ckpt["path"])
    return ckpt, model, rows, predictions


def run_folder(ckpt):
    return os.path.dirname(os.path.abspath(ckpt["path"]))


def report_one(ckpt, model, rows, predictions, spec, args, out):
    """One model: its table, the summary, per-class accuracy, the classes that lose most, confusions."""
    combos = list(dict.fromkeys(r["combo"] for r in rows))
    df = write_results(rows, out, title=f"{ckpt['model']} on {spec.name}, {args.split} split (fractions)")
    print(f"\n{ckpt['model']} ({ckpt['config']}) on {spec.name}, {args.split} split, {rows[0]['images']} images")
    print(fmt_table(df[["combo", "img_size", *METRICS]]))
    print(fmt_table(summary_rows(df)))
    bar_chart(df, "combo", "accuracy", "img_size", os.path.join(out, "accuracy_by_combo.png"),
              f"{ckpt['model']}: {args.split} accuracy per channel combination ({spec.name})")
    per_class = per_class_table(predictions, spec.classes)
    per_class.to_csv(os.path.join(out, "per_class.csv"), index=False, float_format="%.4f")
    losers = class_losses(per_class, combos, spec.bands)
    if len(losers):
        print(f"\nclasses that lose most without every channel (accuracy on {losers.columns[2]} minus the mean over "
              f"the {len(combos) - 1} other combinations; {df.img_size.iloc[0]}px):")
        print(fmt_table(losers))
    confusions = write_confusions(predictions, df, spec.classes, out, ckpt["model"])
    mistakes = top_confusions(predictions, spec.classes)
    write_results(mistakes.to_dict("records"), out, "top_confusions",
                  f"{ckpt['model']} on {spec.name}, {args.split} split: the most frequent confusions of each "
                  "combination (share: of the true class's images)")
    first = mistakes[mistakes.img_size == df.img_size.iloc[0]].groupby("combo", sort=False).head(1)
    if len(first):
        print(f"\nthe most frequent confusion of each combination ({df.img_size.iloc[0]}px; "
              "top_confusions.md has the five most frequent):")
        print(fmt_table(first.drop(columns="img_size")))
    if args.complexity:
        row, costs = print_complexity(model, ckpt["model"])
        write_results([row], out, stem="complexity")
        write_results(costs, out, stem="stem_cost")
    return ["results.json, .csv, .md", "accuracy_by_combo.png", "per_class.csv", "top_confusions.json, .csv, .md",
            *[os.path.basename(p) for p in confusions]]


def report_many(evaluated, spec, args, out):
    """Several models in one table, each combination's gap to the first model's, and a heatmap."""
    names = {}
    rows = []
    for ckpt, _, model_rows, _ in evaluated:
        name = ckpt["model"]
        if name in names.values():  # two runs of one model: told apart by their folders
            name = f"{name} ({os.path.basename(run_folder(ckpt))})"
        names[ckpt["path"]] = name
        rows += [{**r, "model": name} for r in model_rows]
    df = pd.DataFrame(rows)
    first = df[df.model == names[evaluated[0][0]["path"]]].set_index(["combo", "img_size"])["accuracy"]
    df["gap_to_first"] = [a - first.get((c, s), float("nan")) for a, c, s in zip(df.accuracy, df.combo, df.img_size)]
    columns = ["model", "combo", "img_size", "accuracy", "precision", "recall", "f1", "gap_to_first"]
    title = (f"{len(evaluated)} Task 1 models on {spec.name}, {args.split} split (fractions; gap: accuracy "
             f"minus {df.model.iloc[0]}'s)")
    write_results(df[[*columns, "top5", "f1_macro", "images", "checkpoint"]].to_dict("records"), out, title=title)
    print(f"\n{title}, {rows[0]['images']} images")
    print(fmt_table(df[columns]))
    for size, part in df.groupby("img_size", sort=False):
        grid = part.pivot_table(index="model", columns="combo", values="accuracy", sort=False)
        heatmap(grid, os.path.join(out, f"accuracy_{size}px.png"), f"{args.split} accuracy at {size}px ({spec.name})")
    return ["results.json, .csv, .md", *[f"accuracy_{s}px.png" for s in df.img_size.unique()]]


@cli
def main(argv=None):
    args = parse_args(argv)
    if args.as_model and len(args.checkpoints) > 1:
        raise UserError("--as-model takes one checkpoint")
    check_distinct(args.checkpoints, "--checkpoints")
    ctx = distributed.init(args.device)
    first = load_checkpoint(args.checkpoints[0])
    spec = describe_root(data_root(args.data_root, first), first.get("bands"))
    evaluated = [evaluate_checkpoint(p, spec, args, ctx) for p in args.checkpoints]
    if not ctx.main:
        return 0
    many = len(evaluated) > 1
    # weights read as another model get a folder of their own, beside the checkpoint's own evaluation
    kind = "compare" if many else "eval" + (f"-as-{args.as_model}" if args.as_model else "")
    out = args.out or os.path.join(run_folder(evaluated[0][0]), f"{kind}-{args.split}")
    wrote = write_folder(out, lambda tmp: report_many(evaluated, spec, args, tmp) if many
                         else report_one(*evaluated[0], spec, args, tmp))
    print(f"\nwrote {out}/: {', '.join(wrote)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

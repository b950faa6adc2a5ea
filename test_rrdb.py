"""Compare Task 2 checkpoints: complexity, weighted layers, metrics and, against a baseline, the ratio.

    python test_rrdb.py --checkpoints runs/shallow runs/rrdb --baseline runs/resnet34

Ratios (accuracy / the baseline's) and the 90% verdict are computed only with --baseline. The
data is the first checkpoint's unless --data-root names other data; accuracies are fractions.
The output folder (default <first run folder>/compare-<split>) is replaced whole.
"""
import os
import sys

import pandas as pd

from data import describe_root
from data.loaders import default_workers
from engine import evaluate_split
from flags import add_data_root, add_decode, add_device, add_limit, add_no_ema, add_workers
from models import inference_form
from models.loading import best_of, check_distinct, checkpoint_file, load_model
from models.registry import max_layers, model_task
from utils import distributed
from utils.checkpoint import data_root, image_size, load_checkpoint, save_atomic
from utils.complexity import complexity_row
from utils.errors import Parser, UserError, at_least, cli, img_side
from utils.files import write_folder
from utils.metrics import per_class_accuracy
from utils.report import fmt_table, plt, save_figure, write_results

TARGET = 0.9
COLUMNS = ["model", "layers", "params", "macs", "flops", "accuracy", "top5", "precision", "recall", "f1",
           "ratio_to_baseline", "pass_90"]


def parse_args(argv):
    p = Parser(description=__doc__)
    p.add_argument("--checkpoints", nargs="+", required=True, help="best.pt / last.pt, or run folders (their best.pt)")
    p.add_argument("--baseline", default=None,
                   help="checkpoint whose accuracy the others are divided by (e.g. the ResNet34)")
    add_data_root(p, "the first checkpoint's data")
    add_no_ema(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--img-size", type=img_side, default=None, help="default: each checkpoint's training size")
    p.add_argument("--out", default=None, help="default: <first run folder>/compare-<split>")
    p.add_argument("--batch-size", type=at_least(1), default=128)
    add_workers(p, default_workers(), "loader processes")
    add_decode(p)
    add_limit(p, "evaluate this many images (evenly spaced)")
    add_device(p)
    p.add_argument("--save-deployed", default=None, metavar="DIR",
                   help="also write each evaluated model, deployed, as DIR/<model>.pt (the second checkpoint of a "
                        "model as DIR/<model>-2.pt, and so on; loads like any checkpoint)")
    return p.parse_args(argv)


def add_ratios(rows, baseline_accuracy, classes):
    """Accuracy as a fraction of the baseline's, and whether it reaches the 90% target; a baseline
    hardly above chance makes every ratio large, and is said to."""
    chance = 1 / classes
    if baseline_accuracy < 2 * chance:
        print(f"warning: the baseline's accuracy {baseline_accuracy:.4f} is under twice chance (2 x {chance:.4f}); "
              "ratios against it say little", file=sys.stderr)
    for r in rows:
        r["ratio_to_baseline"] = r["accuracy"] / baseline_accuracy if baseline_accuracy > 0 else float("nan")
        r["pass_90"] = bool(r["ratio_to_baseline"] >= TARGET)
    return rows


def evaluate_checkpoint(path, spec, args, ctx, saved):
    ckpt, model = load_model(path, spec.classes, ema=args.ema)
    model = inference_form(model).to(ctx.device)
    teacher = ckpt["args"].get("teacher")
    name = f"{ckpt['model']}+kd" if teacher else ckpt["model"]
    if args.save_deployed and ctx.main:
        os.makedirs(args.save_deployed, exist_ok=True)
        kept = {k: ckpt[k] for k in ("model", "config", "classes", "data", "args", "epoch") if k in ckpt}
        saved[name] = saved.get(name, 0) + 1  # two runs of one model must not share a file
        file = f"{name}.pt" if saved[name] == 1 else f"{name}-{saved[name]}.pt"
        averaged = bool(ckpt.get("averaged") or (args.ema and ckpt.get("ema")))  # the raw weights stay behind
        save_atomic({**kept, "state_dict": model.state_dict(), "deployed": True, "averaged": averaged},
                    os.path.join(args.save_deployed, file))
    size = image_size(ckpt, args.img_size)
    [metrics], results = evaluate_split(model, spec, args.split, size, ["RGB"], ctx, args.batch_size,
                                        args.workers, args.limit, decode=args.decode)
    targets, top = results["RGB"]
    cost = complexity_row(model.cpu())
    limit = max_layers(ckpt["model"])
    if limit is not None and cost["layers"] > limit:
        raise UserError(f"{path}: deployed {ckpt['model']} runs {cost['layers']} weighted layers, above its "
                        f"limit of {limit}")
    return {"model": name, "teacher": teacher, "checkpoint": ckpt["path"], "img_size": size,
            "epochs": ckpt["args"].get("epochs"), "seed": ckpt["args"].get("seed"), **cost, **metrics,
            "per_class": per_class_accuracy(targets, top[:, 0], len(spec.classes))}


def plot(df, base, path, title):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(df["model"], df["accuracy"], color=["tab:gray" if base and m == base["model"] else "tab:blue"
                                               for m in df["model"]])
    if base:
        ax.axhline(TARGET * base["accuracy"], ls="--", c="tab:red", label=f"90% of {base['model']}")
        ax.legend()
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    plt.xticks(rotation=20)
    save_figure(path)


def report(rows, per_class, base, spec, args, out):
    title = f"Task 2 on {spec.name}, {args.split} split (fractions)"
    df = write_results(rows, out, title=title)
    print(f"\n{title}, {rows[0]['images']} images; MACs/FLOPs/params at 3x224x224"
          + (f"; ratio = accuracy / {base['model']}'s (the baseline)" if base else ""))
    print(fmt_table(df[[c for c in COLUMNS if c in df]]))
    plot(df, base, os.path.join(out, "accuracy.png"), f"Task 2 accuracy ({spec.name})")
    per_class.to_csv(os.path.join(out, "per_class.csv"), index=False, float_format="%.4f")


@cli
def main(argv=None):
    args = parse_args(argv)
    ctx = distributed.init(args.device)
    check_distinct(args.checkpoints, "--checkpoints")
    paths = list(args.checkpoints)
    baseline = args.baseline
    if baseline:  # one of the checkpoints, under any of its names, or else one more in front of them
        baseline = next((p for p in paths if checkpoint_file(p) == checkpoint_file(baseline)), baseline)
        if baseline not in paths:
            paths.insert(0, baseline)
    ckpts = [load_checkpoint(best_of(p)) for p in paths]  # all read and checked before anything is written
    for ckpt in ckpts:
        if model_task(ckpt["model"]) != 2:
            raise UserError(f"{ckpt['path']} is a Task 1 model ({ckpt['model']!r}): evaluate it with test_dw.py")
    spec = describe_root(data_root(args.data_root, ckpts[0]))
    saved = {}
    rows = [evaluate_checkpoint(p, spec, args, ctx, saved) for p in paths]
    per_class = pd.DataFrame({"class": range(len(spec.classes)), "name": spec.classes})
    for i, r in enumerate(rows):  # one column per checkpoint, named by its model
        per_class[r["model"] if r["model"] not in per_class else f"{r['model']} ({i + 1})"] = r.pop("per_class")
    base = rows[paths.index(baseline)] if baseline else None
    if base is not None:
        add_ratios(rows, base["accuracy"], len(spec.classes))
    if not ctx.main:
        return 0
    first = rows[paths.index(args.checkpoints[0])]["checkpoint"]  # not the baseline put in front of it
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(first)), f"compare-{args.split}")
    write_folder(out, lambda tmp: report(rows, per_class, base, spec, args, tmp))
    print(f"\nwrote {out}/: results.json, .csv, .md, accuracy.png and per_class.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())

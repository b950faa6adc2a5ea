"""Task 1's tables and figures: the main table (with its equal-time rows), ablation, sandwich
cost options, ResNet-18."""
import dataclasses
import os

import pandas as pd

from flags import BEFORE_FLAG
from utils.checkpoint import load_checkpoint
from utils.report import heatmap, markdown, plus_minus, write_results
from utils.validate import read_rows

from .jobs import task1_rows
from .rows import (
    ABLATION_NAMES,
    DISTINCT,
    EQUAL_TIME,
    FINETUNE,
    HEADLINE,
    RESNET18_ROWS,
    ROWS,
    SANDWICH_ROWS,
    SINGLE,
    SIZE_ROWS,
    SIZES,
    TABLE_ORDER,
    TASK1_COMBOS,
    TASK1_ROWS,
    equal_time_rows,
    row_runs,
    trained_dir,
    wanted_rows,
)
from .tables import budget, data_name, mean_std, on_front_page, paste, run_logs, timed_as, train_seconds, wall_minutes


def time_ratio(args, seeds):
    """How much longer dwg trains than plain_zero per epoch (``equal_time``), once both rows have a
    finished run; None before, or without the bench's measurement. The runs' own logs give each
    row's mean minutes per run, never the ratio: runs that share the cores time each other's load,
    not their own cost.

    The ratio is for training (loading and steps, without validation)."""
    dwg, plain = run_logs(args, "dwg", seeds), run_logs(args, "plain_zero", seeds)
    found = equal_time(args, seeds) if dwg and plain else None
    if found is None:
        return None
    bench, epochs = found
    return {"train": bench["ratio_to_plain"], "whole": bench["epoch_ratio_to_plain"], "epochs": epochs,
            "source": f"python -m bench --parts epoch, {bench['repeats']} alternated runs each",
            "dwg_min": sum(map(wall_minutes, dwg)) / len(dwg), "plain_min": sum(map(wall_minutes, plain)) / len(plain)}


def equal_time(args, seeds):
    """dwg's training epoch against plain_zero's as ``python -m bench --parts epoch`` measured it
    (whole epochs of the two, alternated, nothing else running) for this setting and dwg's recipe
    (that of its run when it has one, else the one its command gives), and the budget of the
    equal-time rows it sets: -> (the bench's row, epochs), or None without that measurement."""
    run, = row_runs(args, [(ROWS["dwg"], seeds[0])])
    last = os.path.join(run.out, "last.pt")
    recipe = load_checkpoint(last)["args"] if os.path.exists(last) else vars(run.script_args())
    bench = bench_epoch_ratio(args, recipe)
    if bench is None:
        return None
    # Training time, not validation: the proxy's val split is a fifth of its train split and
    # dwg validates seven combinations, where the course's 450 val images are 0.7% of 63k.
    return bench, max(1, int(args.epochs * bench["ratio_to_plain"] + 0.5))  # half up, not to even


def bench_epoch_ratio(args, dwg_recipe):
    """The bench's row for dwg in results/bench/epoch.json if it timed this data, size, batch and
    the sandwich recipe of ``dwg_recipe`` (a run's flags); else None."""
    path = os.path.join(args.bench, "epoch.json")
    if not os.path.exists(path):
        return None
    for row in read_rows(path, ("model", "data", "img_size", "batch")):
        if row["model"] == "dwg" and row["data"] == data_name(args) and row["img_size"] == args.img_size \
                and row["batch"] == args.batch_size \
                and timed_as(row, dwg_recipe):
            return row
    return None


def main_rows(args, seeds):
    return wanted_rows(args, TASK1_ROWS, seeds)


def equal_time_wanted(args, seeds):
    """The equal-time rows, when the bench has timed dwg's epoch and both dwg and plain_zero are
    trained by this command or have been (the table compares them only then)."""
    found = equal_time(args, seeds)
    trained = {r.name for r, _ in main_rows(args, seeds)}
    if found is None or not all(n in trained or run_logs(args, n, seeds) for n in ("dwg", "plain_zero")):
        return []
    return wanted_rows(args, equal_time_rows(found[1], args.epochs), seeds)


def task1_runs(args, seeds):
    """What --part task1 trains, stage by stage: its rows, then their equal-time twins."""
    return [lambda: row_runs(args, main_rows(args, seeds)), lambda: row_runs(args, equal_time_wanted(args, seeds))]


def task1_remarks(args, seeds):
    if equal_time(args, seeds) is None:
        return ["task1: no equal-time rows (python -m bench --parts epoch has not timed dwg against plain_zero for "
                "this data, size, batch and recipe)"]
    return []


def expert_row(model):
    """The experts' rows (one channel each) share one table row, at equal epochs or equal time."""
    if "only" not in model:
        return model
    return "single-channel expert" + (EQUAL_TIME if model.endswith(EQUAL_TIME) else "")


def task1(args, seeds):
    df = task1_rows(args, main_rows(args, seeds))
    cost = time_ratio(args, seeds)
    if cost is not None:
        df = pd.concat([df, task1_rows(args, wanted_rows(args, equal_time_rows(cost["epochs"], args.epochs), seeds))])
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
    else:
        title += ("; no equal-time rows: python -m bench --parts epoch has not timed dwg against plain_zero for "
                  "this data, size, batch and recipe")
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
    if on_front_page(args):
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
            shown.loc[row, combo] = plus_minus(m, sd if n > 1 else None)
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


def ablation_rows(args, seeds):
    """Each mechanism alone and together (first seed)."""
    return wanted_rows(args, [dataclasses.replace(ROWS[n], every_seed=False) for n in ABLATION_NAMES], seeds[:1])


def sandwich_rows(args, seeds):
    """plain_zero and the sandwich's cost options (first seed)."""
    return wanted_rows(args, [ROWS["plain_zero"], *SANDWICH_ROWS], seeds[:1])


def resnet18_rows(args, seeds):
    return wanted_rows(args, RESNET18_ROWS, seeds[:1])


def one_stage(rows):
    """A part that trains its rows in one go: -> its ``runs`` (stages of runs)."""
    return lambda args, seeds: [lambda: row_runs(args, rows(args, seeds))]


def task1_ablation(args, seeds):
    """Each mechanism alone and together (first seed)."""
    df = task1_rows(args, ablation_rows(args, seeds))
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
    df = task1_rows(args, sandwich_rows(args, seeds))
    table = accuracy_table(df[df.img_size == args.img_size],
                           ["plain_zero", *(r.name for r in SANDWICH_ROWS)]).drop(columns="worst/RGB")
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
    trained = load_checkpoint(os.path.join(trained_dir(args, row, seed), "last.pt"))["args"]
    if trained["channel_aug"] != "sandwich" or not os.path.exists(path):
        return float("nan")
    options = [trained.get(f"sandwich_{k}", BEFORE_FLAG[f"sandwich_{k}"]) for k in ("fraction", "scale", "every")]
    for r in read_rows(path, ("backbone", "ratio_to_plain")):
        if r["backbone"] == backbone and [r.get(k) for k in ("fraction", "scale", "every")] == options:
            return r["ratio_to_plain"]
    return float("nan")


def task1_resnet18(args, seeds):
    """dwg and plain_zero on ResNet-18 (first seed): the result is not an artefact of the small CNN."""
    df = task1_rows(args, resnet18_rows(args, seeds))
    table = accuracy_table(df[df.img_size == args.img_size], [r.name for r in RESNET18_ROWS])
    title = f"Task 1 on ResNet-18, {data_name(args)} test split ({budget(args)}, first seed)"
    text = table.reset_index(names="model").to_markdown(index=False, floatfmt=".4f")
    write_results(table.reset_index(names="model").to_dict("records"), args.results, "task1_resnet18", title)
    paste(args, "task1-resnet18", f"{title}\n\n{text}")
    print(text)


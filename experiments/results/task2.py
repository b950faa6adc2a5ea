"""Task 2's tables and figures: the main table, the budget sweep and its front-page rows, the
recipe options."""
import argparse
import os

import pandas as pd

from utils.errors import UserError
from utils.report import markdown, plt, save_figure, write_results
from utils.validate import read_rows

from .jobs import evaluate_side_by_side, finished_run
from .rows import RECIPES, SWEEP_MODELS, TASK2_MODELS, Run, recipe
from .tables import budget, data_name, machine, mean_std, paste, run_log, wall_minutes


def task2_run(args, out, row, model, seed, *flags, epochs=None, teacher=None, note=""):
    """A Task 2 run in folder ``out``: every flag one that a finished run there must share (its
    teacher's best.pt among them), but ``flags`` (a recipe option's)."""
    distil = ("--teacher", os.path.join(teacher.out, "best.pt")) if teacher else ()
    common = ("--model", model, *recipe(args, seed, **({"epochs": epochs} if epochs else {})), *distil)
    return Run(row, seed, out, "train_rrdb.py", common, tuple(flags), after=teacher, note=note)


def task2_seed_runs(args, seed):
    """Every model of ``TASK2_MODELS``, then shallow distilled from our own from-scratch ResNet34
    (the same recipe, no pretrained weights)."""
    def out(name):
        return os.path.join(args.runs, "task2", f"{name}-s{seed}")
    runs = [task2_run(args, out(model), model, model, seed) for model in TASK2_MODELS]
    return [*runs, task2_run(args, out("shallow_kd"), "shallow_kd", "shallow", seed, teacher=runs[0])]


def task2_runs(args, seeds):
    """What --part task2 trains: every seed's runs in one go, --jobs at a time, as the sweep trains
    (on a CPU the thread count changes the arithmetic's order, so the same recipe gives the same
    numbers in both tables only with the same --jobs)."""
    return [lambda: [r for seed in seeds for r in task2_seed_runs(args, seed)]]


def task2(args, seeds):
    rows = []
    for seed in seeds:
        paths = [os.path.join(r.out, "best.pt") for r in task2_seed_runs(args, seed)]
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
    ax.set_title(f"Task 2 on {data_name(args)}: accuracy against MACs\n({budget(args)})", fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(os.path.join(args.figs, "task2_acc_vs_macs.png"))
    cols = ["model", "layers", "params", "macs", "accuracy", "accuracy_std", "precision", "recall", "f1",
            "ratio_to_baseline", "seeds"]
    text = agg[cols].to_markdown(index=False, floatfmt=".4f")
    paste(args, "task2", f"{title}\n\n{text}")
    print(text)


def saturation(accuracy_by_budget, gain=0.01):
    """The first budget after which doubling the epochs gains less than ``gain``; None if none does."""
    budgets = sorted(accuracy_by_budget)
    for low, high in zip(budgets, budgets[1:]):
        if high == 2 * low and accuracy_by_budget[high] - accuracy_by_budget[low] < gain:
            return low
    return None


def sweep_run(args, model, epochs, seed, name=None, teacher=None, note=""):
    out = os.path.join(args.runs, "task2-sweep", f"{name or model}-e{epochs}-s{seed}")
    return task2_run(args, out, name or model, model, seed, epochs=epochs, teacher=teacher, note=note)


def resnet_val(args, seed):
    """The best validation accuracy of each finished ResNet34 run of the sweep, by budget: that of
    the checkpoint it kept (saturation, and so the teacher, is judged on validation; the test
    split only reports)."""
    runs = {e: sweep_run(args, "resnet34", e, seed) for e in args.budgets}
    return {e: run_log(r.out)["val_acc"].max() for e, r in runs.items() if finished_run(r)}


def kd_budget(args, val):
    """The budget of the ResNet34 that shallow+kd distils from: where it saturates, else the
    longest budget, the best teacher the sweep has (distilling from it still says what distillation
    adds there); None while that run has not finished."""
    return saturation(val) or (max(args.budgets) if max(args.budgets) in val else None)


def sweep2_runs(args, seeds):
    """What --part task2-sweep trains, stage by stage: every model at every budget (first seed),
    then shallow distilled from the ResNet34 that ``kd_budget`` picks."""
    seed = seeds[0]

    def distilled():
        val = resnet_val(args, seed)
        epochs, note = kd_budget(args, val), ""
        if epochs is None or len(val) < len(args.budgets):
            epochs = epochs or max(args.budgets)
            note = f"{epochs} epochs assumed: the teacher's budget is known once ResNet34 has trained every budget"
        teacher = sweep_run(args, "resnet34", epochs, seed)
        return [sweep_run(args, "shallow", epochs, seed, name="shallow_kd", teacher=teacher, note=note)]
    return [lambda: [sweep_run(args, m, e, seed) for e in args.budgets for m in SWEEP_MODELS], distilled]


def task2_sweep(args, seeds):
    """ResNet34 and the shallow nets at every budget of ``--budgets`` (first seed), side by side,
    with ``shallow`` distilled from the ResNet34 of ``kd_budget``."""
    seed = seeds[0]
    sweep_dir = os.path.join(args.runs, "task2-sweep")
    # A sweep runs across sessions: a budget is reported once its ResNet34 has finished, and a
    # shallow model still training there is left blank rather than holding the row back.
    runs = {(m, e): sweep_run(args, m, e, seed) for e in args.budgets for m in SWEEP_MODELS}
    outs = {key: r.out for key, r in runs.items() if finished_run(r)}
    budgets = [e for e in args.budgets if ("resnet34", e) in outs]
    if not budgets:
        raise UserError(f"no budget of {args.budgets} has a finished resnet34 run under {args.runs}")
    rows = []
    for epochs in budgets:
        done = [m for m in SWEEP_MODELS if (m, epochs) in outs]
        ev = os.path.join(sweep_dir, f"eval-e{epochs}-s{seed}")
        best = [os.path.join(outs[(m, epochs)], "best.pt") for m in done]
        rows += [{**r, "epochs": epochs, "minutes": wall_minutes(run_log(outs[(m, epochs)]))}
                 for m, r in zip(done, evaluate_side_by_side(args, ev, best))]
    val = resnet_val(args, seed)
    saturated = saturation(val)
    kd_epochs = kd_budget(args, val)
    kd_done = False
    if kd_epochs is not None:
        teacher = sweep_run(args, "resnet34", kd_epochs, seed)
        kd = sweep_run(args, "shallow", kd_epochs, seed, name="shallow_kd", teacher=teacher)
        out, kd_done = kd.out, finished_run(kd)
        if kd_done:
            ev = os.path.join(sweep_dir, f"eval-kd-e{kd_epochs}-s{seed}")
            rows += [{**r, "epochs": kd_epochs, "minutes": wall_minutes(run_log(out))}
                     for r in evaluate_side_by_side(args, ev, [os.path.join(teacher.out, "best.pt"),
                                                              os.path.join(out, "best.pt")])
                     if r["model"] != "resnet34"]
    verdict = (f"ResNet34 saturates at {saturated} epochs (doubling them gains under 1 point of validation "
               "accuracy)" if saturated else f"ResNet34 is not saturated within {budgets} epochs (no doubling "
               "gains under 1 point of validation accuracy)")
    if kd_epochs is not None:
        verdict += (f"; shallow+kd is distilled from the {kd_epochs}-epoch ResNet34" if kd_done
                    else f"; shallow+kd, distilled from the {kd_epochs}-epoch ResNet34, has not finished")
    sweep_table(args, seed, pd.DataFrame(rows), val, verdict)
    task2_headline(args)


def sweep_table(args, seed, df, resnet_val, verdict):
    """Accuracy per budget and model, each model against ResNet34, minutes; the figure beside."""
    table = df.pivot_table(index="epochs", columns="model", values="accuracy")
    models_run = list(table.columns)
    for m in table.columns.drop("resnet34"):
        table[f"{m} / resnet34"] = table[m] / table["resnet34"]
    table["resnet34 val"] = pd.Series(resnet_val)
    table = table.join(df.pivot_table(index="epochs", columns="model", values="minutes").add_suffix(" min"))
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
    ax.set_title(f"Task 2 on {data_name(args)}: accuracy against training budget\n"
                 f"({machine(args)}: {args.img_size}px, seed {seed})", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(os.path.join(args.figs, "task2_sweep.png"))
    text = markdown(table.reset_index().astype({"epochs": str}))
    paste(args, "task2-sweep", f"{title}\n\n{text}")
    print(f"{title}\n\n{text}")


def task2_headline(args):
    """The front page's Task 2 rows (ResNet34 and shallow at each budget), read from the sweep's
    table as written, so that they can be pasted again without its runs."""
    path = os.path.join(args.results, "task2_sweep")
    if not os.path.exists(path + ".json"):
        raise UserError(f"{path}.json: no Task 2 sweep table yet; run --part task2-sweep first")
    table = pd.DataFrame(read_rows(path + ".json", ("epochs",)))
    try:
        with open(path + ".md", encoding="utf-8") as f:
            title = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}.md, the sweep table's title: "
                        f"{getattr(exc, 'strerror', None) or exc}") from None
    cols = [c for c in ["epochs", "resnet34", "shallow", "shallow+kd", "shallow / resnet34",
                        "shallow+kd / resnet34"] if c in table]
    paste(args, "task2-headline", f"{title}; test accuracy ([every model and the Task 2 table](docs/task2.md))"
          f"\n\n{markdown(table[cols].astype({'epochs': str}))}")


def recipe_runs(args, seed):
    """``shallow`` with each of ``RECIPES`` at the budget of ``--epochs``, by recipe name."""
    return {name: task2_run(args, os.path.join(args.runs, "task2-recipe", f"shallow-{name}-e{args.epochs}-s{seed}"),
                            f"shallow-{name}", "shallow", seed, *flags)
            for name, flags in RECIPES.items()}


def task2_recipe(args, seeds):
    """The recipe options on ``shallow`` (first seed), trained all at once (``--jobs``), so that
    their minutes are measured under the same load."""
    seed = seeds[0]
    runs = recipe_runs(args, seed)
    outs = {name: r.out for name, r in runs.items()}
    done = [name for name in RECIPES if finished_run(runs[name])]
    if "plain" not in done:
        raise UserError(f"{outs['plain']}: the plain recipe has not finished; run without --no-train")
    evaluation = evaluate_side_by_side(args, os.path.join(args.runs, "task2-recipe", f"eval-e{args.epochs}-s{seed}"),
                                       [os.path.join(outs[name], "best.pt") for name in done])
    rows = []
    for name, r in zip(done, evaluation):  # test_rrdb.py keeps the order of its checkpoints
        log = run_log(outs[name])
        rows.append({"recipe": name, "flags": " ".join(RECIPES[name]) or "-", "accuracy": r["accuracy"],
                     "f1": r["f1"], "best val": log["val_acc"].max(), "minutes": wall_minutes(log)})
    table = pd.DataFrame(rows)
    plain = table.loc[table["recipe"] == "plain", "minutes"].iloc[0]
    table["minutes / plain"] = table["minutes"] / plain if plain > 0 else float("nan")  # a toy run logs 0.0 s
    one_seed = argparse.Namespace(**{**vars(args), "seeds": [seed]})
    title = (f"Task 2 recipe options: shallow on {data_name(args)} test split ({budget(one_seed)}; one run each, "
             f"{min(args.jobs, len(RECIPES))} at a time; 'minutes': training wall minutes from each run's log)")
    write_results(table.to_dict("records"), args.results, "task2_recipe", title)
    text = markdown(table)
    paste(args, "task2-recipe", f"{title}\n\n{text}")
    print(f"{title}\n\n{text}")


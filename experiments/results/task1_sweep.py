"""Task 1's budget sweep: the channel-adaptive recipes against the specialists at every budget.

The specialists are plain_zero on RGB (selected on RGB) and one expert per single channel; the
candidates are dwg with its earlier default and the recipes of ``SWEEP_RECIPES``. Every row trains at
every budget of ``--budgets`` for the first seed; plain_zero's validation accuracy says where
the budget saturates (doubling it gains under 1 point), and that budget and the shortest one
train every seed of ``--seeds`` for the rows that claim something (``every_seed``). The full
sandwich trains at the saturated budget (the longest finished one while none is saturated).
A run finished on another machine counts from its record (records.py): it is not trained again.
"""
import dataclasses
import os

import pandas as pd

from utils.errors import UserError
from utils.report import markdown, plt, plus_minus, save_figure, write_results
from utils.validate import read_rows

from .jobs import evaluate_rows, finished
from .records import check_combos, find, load_records, made, merge, records_path, save_records
from .rows import (
    DISTINCT,
    ROWS,
    SINGLE,
    SWEEP_RECIPES,
    SWEEP_ROWS,
    row_combos,
    row_runs,
    trained_dir,
    trained_recipe,
)
from .tables import data_name, machine, on_front_page, paste, run_log, timed_as, wall_minutes
from .task2 import saturation

EXPERT = "single-channel expert"
GAP_COMBOS = ["RGB", *SINGLE]  # RGB against plain_zero, each single channel against its expert


def budget_row(row, epochs):
    """``row`` trained for ``epochs`` (its run folder named for the budget)."""
    return dataclasses.replace(row, name=f"{row.name}-e{epochs}", recipe={**row.recipe, "epochs": epochs},
                               same_as=row.same_as and f"{row.same_as}-e{epochs}")


ALL_ROWS = {r.name: r for r in [*SWEEP_ROWS, ROWS["sandwich-full"]]}  # the full sandwich last


def sweep_rows(args):
    """The sweep's rows, the full sandwich last; only those of ``--models`` when given."""
    return [r for r in ALL_ROWS.values() if not args.models or r.name in args.models.split(",")]


def making(args, row, seed):
    """What makes the numbers of ``row`` with ``seed`` (records.made): the recipe of the run that
    trained its checkpoint (another row's for a row that reuses one) and its evaluation flags."""
    source = row
    if row.same_as:
        source = budget_row(ALL_ROWS[row.same_as.rsplit("-e", 1)[0]], row.recipe["epochs"])
    run, = [r for r in row_runs(args, [(source, seed)]) if r.row == source.name]
    return made(args, run, row.eval_flags)


def recorded(args, records, row, seed):
    """The record of ``row`` with ``seed`` made as this command makes it, or None."""
    record = find(records, row.name, seed, making(args, row, seed))
    return record and check_combos(args, record, row_combos(row))


def unrecorded(args, runs):
    """``runs`` less those a record says have finished (on this machine or another)."""
    records = load_records(args)
    return [r for r in runs if not find(records, r.row, r.seed, made(args, r, []))]


def sweep_plan(args, seeds, saturated):
    """(row, seed) pairs to train: every row at every budget for the first seed, then every seed at
    the shortest and the saturated budget for the rows that claim something, then the full
    sandwich at the saturated budget."""
    rows = sweep_rows(args)
    plan = [(budget_row(r, e), seeds[0]) for e in args.budgets for r in rows if r.name != "sandwich-full"]
    for e in dict.fromkeys([min(args.budgets), saturated]):
        plan += [(budget_row(r, e), s) for s in seeds[1:] for r in rows if r.every_seed]
    plan += [(budget_row(r, saturated), seeds[0]) for r in rows if r.name == "sandwich-full"]
    return plan


def plain_val(args, seed, records):
    """plain_zero's best RGB validation accuracy per finished budget (first seed): from its run
    here, else from its record."""
    out = {}
    for e in args.budgets:
        row = budget_row(ALL_ROWS["plain_zero"], e)
        if finished(args, row, seed):
            out[e] = run_log(trained_dir(args, row, seed))["val_acc"].max()
        elif (record := recorded(args, records, row, seed)) and record["val_best"] is not None:
            out[e] = record["val_best"]
    return out


def first_pairs(args, seeds):
    """Every row but the full sandwich at every budget, first seed."""
    return [(budget_row(r, e), seeds[0]) for e in args.budgets for r in sweep_rows(args) if r.name != "sandwich-full"]


def claim_budget(args, seeds, records):
    """The budget where the claims are made: where plain_zero saturates, or while no doubling
    saturates, the longest budget it has finished (the longest of all before any has); -> (budget,
    plain_zero's validation accuracy by finished budget, whether every budget has finished)."""
    val = plain_val(args, seeds[0], records)
    claim = saturation(val) or (max(val) if val else max(args.budgets))
    return claim, val, len(val) == len(args.budgets)


def sweep_runs(args, seeds):
    """What --part task1-sweep trains, stage by stage: every row at every budget for the first
    seed, then what plain_zero's saturation decides (``sweep_plan``); none that has a record."""
    def rest():
        claim, _, known = claim_budget(args, seeds, load_records(args))
        runs = unrecorded(args, row_runs(args, sweep_plan(args, seeds, claim)))
        if known:
            return runs
        first = {r.out for r in row_runs(args, first_pairs(args, seeds))}
        note = (f"{claim} epochs assumed: the budget where plain_zero saturates is known once it has trained "
                "every budget")
        return [dataclasses.replace(r, note=note) if r.out not in first and r.epochs == claim else r for r in runs]
    return [lambda: unrecorded(args, row_runs(args, first_pairs(args, seeds))), rest]


def run_records(args, pairs):
    """Records of the (row, seed) runs finished here, each evaluated first (test_dw.py, unless
    its evaluation is newer than its checkpoint)."""
    if not pairs:
        return []
    df = evaluate_rows(args, pairs)
    df = df[df.img_size == args.img_size]
    records = []
    for row, seed in pairs:
        log = run_log(trained_dir(args, row, seed))
        acc = df[(df.model == row.name) & (df.seed == seed)].set_index("combo")["accuracy"]
        records.append({"run": row.name, "seed": seed, "made": making(args, row, seed),
                        "accuracy": {c: float(a) for c, a in acc.items()},
                        "val_best": None if log["val_acc"].isna().all() else float(log["val_acc"].max()),
                        "minutes": float(wall_minutes(log))})
    return records


def task1_sweep(args, seeds):
    """Tables and figure of every run of the rows, budgets and seeds that has finished, here or (by
    its record) elsewhere, whether or not the plan still asks for it; publishing adds the runs
    finished here to the records."""
    records = load_records(args)
    claim, val, _ = claim_budget(args, seeds, records)
    saturated = saturation(val)
    every = [(budget_row(r, e), s) for e in args.budgets for r in sweep_rows(args) for s in seeds]
    records = merge(records, run_records(args, [(r, s) for r, s in every if finished(args, r, s)]))
    done = [(r, s, rec) for r, s in every if (rec := recorded(args, records, r, s))]
    if not done:
        raise UserError(f"no finished run of the Task 1 sweep under {args.runs}/task1 nor in "
                         f"{records_path(args)}; run the same command without --no-train")
    if args.update_docs:
        save_records(args, records)
    df = pd.DataFrame([{"model": r.name, "seed": s, "combo": c, "accuracy": a, "epochs": r.recipe["epochs"],
                        "row": sweep_name(r.name)} for r, s, rec in done for c, a in rec["accuracy"].items()])
    minutes = pd.DataFrame([{"row": sweep_name(r.name), "epochs": r.recipe["epochs"], "seed": s,
                             "minutes": rec["minutes"]} for r, s, rec in done])
    sweep_tables(args, seeds, df, minutes, val, verdict(val, saturated), claim, saturated)


def verdict(val, saturated):
    """What plain_zero's validation accuracy by budget says of saturation, as the title says it."""
    if saturated:
        return f"plain_zero saturates at {saturated} epochs (doubling gains under 1 point of RGB validation accuracy)"
    if len(val) > 1:
        return (f"plain_zero is not saturated within {sorted(val)} epochs (every doubling gains 1 point or more of "
                f"RGB validation accuracy; add a budget of {2 * max(val)})")
    return (f"where plain_zero saturates is not known from {len(val)} budget(s) of --budgets (a doubling of the "
            "budget, both finished, says it)")


def bench_costs(args):
    """Each recipe's epoch cost against plain_zero's from ``python -m bench --parts epoch``
    (results/bench/epoch.json: runs alone on the machine) for this data, size and batch, with
    validation as the sweep validates (candidates every --val-every epochs); {} when not timed."""
    path = os.path.join(args.bench, "epoch.json")
    if not os.path.exists(path):
        return {}
    setting = (data_name(args), args.img_size, args.batch_size)
    rows = [r for r in read_rows(path, ("model", "data", "img_size", "batch"))  # an untimed cost is null
            if pd.notna(r.get("val_every_epoch_ratio")) and (r["data"], r["img_size"], r["batch"]) == setting]
    costs = {}
    for name, row in ALL_ROWS.items():
        source = row.same_as or name  # a row that evaluates another's checkpoint trains nothing of its own
        timed = [r for r in rows if r["model"] in (source, BENCH_NAME.get(source)) and timed_as(r, row_recipe(row))]
        if timed:
            costs[name] = timed[-1]["val_every_epoch_ratio"]
    return costs


BENCH_NAME = {"dwg": "dwg-equal"}  # the bench's name for a row's recipe, where the two differ


def row_recipe(row):
    """The flags ``row``'s runs train with (a row that reuses another's checkpoint: that row's)."""
    row = ALL_ROWS[row.same_as] if row.same_as else row
    return trained_recipe("train_dw.py", ["--model", row.model, *row.flags])


def cost_source(cost):
    return ("from python -m bench --parts epoch, each run alone on the machine" if cost
            else "not measured: python -m bench --parts epoch has not timed this data, size and batch")


def sweep_name(model):
    """A budget row's table name: its row without the budget, experts under one name."""
    name = model.rsplit("-e", 1)[0]
    return EXPERT if name.endswith("only") else name


def sweep_tables(args, seeds, df, minutes, val, verdict, claim, saturated):
    acc = df.groupby(["row", "epochs", "combo"])["accuracy"].agg(["mean", "std", "count"]).reset_index()
    table = acc.pivot_table(index=["epochs", "row"], columns="combo", values="mean", sort=False)
    combos = [c for c in [*DISTINCT, "BGR"] if c in table.columns]
    table = table[combos]
    std = acc.pivot_table(index=["epochs", "row"], columns="combo", values="std", sort=False).reindex_like(table)
    mins = minutes.groupby(["epochs", "row"])["minutes"].mean()
    table["seeds"] = acc.groupby(["epochs", "row"])["count"].max()
    table["minutes"] = mins
    table["plain_zero val"] = pd.Series({(e, "plain_zero"): v for e, v in val.items()})
    cost = bench_costs(args)
    table["epoch cost"] = [cost.get(r, float("nan")) for _, r in table.index]
    order = ["plain_zero", EXPERT, "dwg", "dwg+recalibrated", *SWEEP_RECIPES, "sandwich-full"]

    def in_order(column):
        return column.map(lambda v: order.index(v) if v in order else v)
    table = table.reset_index().sort_values(["epochs", "row"], key=in_order).set_index(["epochs", "row"])
    gaps = gap_table(df).sort_values(["epochs", "model"], key=in_order)
    seeded = ["plain_zero", "the experts",
              *[r.name for r in sweep_rows(args) if r.every_seed and r.channel is None and r.name != "plain_zero"]]
    title = (f"Task 1 budget sweep on {data_name(args)} test split, {args.backbone} backbone ({machine(args)}: "
             f"{args.img_size}px, batch {args.batch_size}; 'seeds': how many have finished, of seed {seeds[0]} at every"
             f" budget and seeds {', '.join(map(str, seeds))} at {sorted({min(args.budgets), claim})} epochs for "
             f"{', '.join(seeded[:-1])} and {seeded[-1]}; 'minutes': training and validation wall minutes from each "
             f"run's log, {args.jobs} run(s) sharing the cores; 'epoch cost': an epoch with its validation against "
             f"plain_zero's, {cost_source(cost)}); {verdict}")
    write_results(table.reset_index().to_dict("records"), args.results, "task1_sweep" + args.tag, title)
    write_results(gaps.to_dict("records"), args.results, "task1_sweep_gaps" + args.tag,
                  title + "; gap in points to the specialist (mean and standard deviation of the per-seed "
                  "differences over the seeds both rows have)")
    shown = table.copy().astype(object)
    for (e, r), values in table.iterrows():
        for c in combos:
            shown.loc[(e, r), c] = plus_minus(values[c], std.loc[(e, r), c])
    text = markdown(shown.reset_index().astype({"epochs": str}))
    gap_text = gap_markdown(gaps)
    gap_figure(args, gaps, title)
    paste(args, "task1-sweep" + args.tag, f"{title}; test accuracy, mean ± sample standard deviation where "
          f"a row has several seeds\n\n{text}\n\nGap to the specialist in points (plain_zero on RGB, each "
          f"expert on its channel; positive: the candidate is ahead; mean ± standard deviation over the seeds both "
          f"rows have):\n\n{gap_text}")
    print(f"{title}\n\n{text}\n\n{gap_text}")
    if on_front_page(args) and args.update_docs:
        front_page(args, gaps, cost, saturated, verdict)


def front_page(args, gaps, cost, saturated, verdict):
    """The README shows where users train: the gaps at the budget where plain_zero stops gaining,
    with each recipe's measured cost; without one, it keeps what it showed."""
    if not saturated:
        print("README's sweep table kept: no budget of this sweep is saturated")
        return
    paste(args, "task1-sweep-headline",
          f"Task 1 budget sweep at {saturated} epochs on {data_name(args)} test split, {args.backbone} backbone "
          f"({machine(args)}: {args.img_size}px, batch {args.batch_size}; {verdict}); gap in points to the "
          f"specialist (plain_zero on RGB, each expert on its channel; positive: ahead), mean ± standard deviation "
          f"of the per-seed differences; 'epoch cost': an epoch with its validation against plain_zero's, "
          f"{cost_source(cost)} ([every budget, accuracies and figure](docs/task1.md#the-budget-sweep))"
          f"\n\n{headline_markdown(gaps, cost, saturated)}")


def gap_table(df):
    """Each candidate's gap in points to plain_zero on RGB and to each expert on its channel, per
    budget: the mean and sample standard deviation of the per-seed differences over the seeds both
    rows have (the candidate's run of a seed against the specialist's run of the same seed), with their count."""
    acc = df.set_index(["epochs", "row", "combo", "seed"])["accuracy"].sort_index()
    rows = []
    for (e, cand), _ in df.groupby(["epochs", "row"], sort=False):
        if cand in ("plain_zero", EXPERT):
            continue
        row, counts = {"epochs": e, "model": cand}, []
        for combo in GAP_COMBOS:
            rival = "plain_zero" if combo == "RGB" else EXPERT
            mine = acc.get((e, cand, combo), pd.Series(dtype=float))
            theirs = acc.get((e, rival, combo), pd.Series(dtype=float))
            both = mine.index.intersection(theirs.index)
            diff = 100 * (mine[both] - theirs[both])
            row[combo] = diff.mean() if len(both) else float("nan")
            row[f"{combo} sd"] = diff.std() if len(both) > 1 else float("nan")
            counts.append(len(both))
        rows.append({**row, "seeds": min([c for c in counts if c] or [0])})
    return pd.DataFrame(rows, columns=["epochs", "model", *[f"{c}{sd}" for c in GAP_COMBOS for sd in ("", " sd")],
                                       "seeds"])


def gap_frame(gaps):
    """The gaps as 'mean ± sd' (the mean alone from one seed)."""
    shown = gaps[["epochs", "model"]].astype({"epochs": str})
    for combo in GAP_COMBOS:
        shown[combo] = [plus_minus(m, sd, "+.1f") or None for m, sd in zip(gaps[combo], gaps[f"{combo} sd"])]
    shown["seeds"] = gaps["seeds"]
    return shown


def gap_markdown(gaps):
    return markdown(gap_frame(gaps), text=GAP_COMBOS)


# The sweep's dwg row keeps the default dwg had before the sweep chose dwg-singles: the front page says so.
HEADLINE_NAMES = {"dwg": "dwg, earlier default (--single-prob equal)",
                  "dwg+recalibrated": "dwg, earlier default, BatchNorm recalibrated",
                  "dwg-singles": "dwg-singles (dwg's default)"}


def headline_markdown(gaps, cost, epochs):
    """The gaps at ``epochs`` with each recipe's measured epoch cost, as the front page shows them."""
    at = gaps[gaps.epochs == epochs]
    shown = gap_frame(at).drop(columns="epochs").assign(model=at["model"].map(lambda m: HEADLINE_NAMES.get(m, m)))
    shown.insert(len(shown.columns) - 1, "epoch cost", [f"{cost[m]:.2f}x" if m in cost else "–" for m in at["model"]])
    return markdown(shown, text=[*GAP_COMBOS, "epoch cost"])


def gap_figure(args, gaps, title):
    """Gap to the specialist against budget, one line per combination, a panel per candidate."""
    models = list(dict.fromkeys(gaps["model"]))
    if not models:
        return
    cols = min(3, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(models):]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, models):
        g = gaps[gaps.model == model].sort_values("epochs")
        for combo in GAP_COMBOS:
            ax.errorbar(g["epochs"], g[combo], yerr=g[f"{combo} sd"], marker="o", capsize=3, label=combo)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(g["epochs"], [str(e) for e in g["epochs"]])
        ax.minorticks_off()
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("epochs")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("points ahead of the specialist\n(bars: sd over seeds)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Task 1 sweep ({data_name(args)}, {args.img_size}px, {machine(args)})", fontsize=8)
    save_figure(os.path.join(args.figs, f"task1_sweep{args.tag}.png"))

"""Each part's tables and figures, made from its records: titles that state the data, budget,
seeds and machine; files staged in a ``Publication`` and written together at the end."""
import io
import json
import os

import pandas as pd

from data.datasets import evenly_spaced, read_list
from utils.errors import UserError
from utils.files import replace_all
from utils.report import markdown, page_path, pasted, plt, plus_minus
from utils.validate import read_rows

from .records import accuracy, identity, machine
from .runs import CANDIDATES, COMBOS, SINGLE

# The page of each section a part pastes into (a tagged one's, e.g. task1-resnet18, by its prefix).
PAGES = {"task1-headline": "../README.md", "task1-sweep-headline": "../README.md", "task2-headline": "../README.md",
         "task1": "task1-results.md", "task1-sweep": "task1-results.md", "task1-lr": "task1-results.md",
         "task2": "task2.md", "task2-sweep": "task2.md", "bands": "multiband.md"}
EXPERT = "expert (its channel)"


def sections(part, args):
    """The marked sections ``part`` pastes into; the README's only from the main setting or a
    tagged one asked for with ``--front-page``."""
    front = not args.tag or args.front_page
    return {"task1": ["task1" + args.tag, *["task1-headline"] * front],
            "task1-sweep": ["task1-sweep" + args.tag, *["task1-sweep-headline"] * front],
            "task1-lr": ["task1-lr" + args.tag], "task2": ["task2"],
            "task2-sweep": ["task2-sweep", "task2-headline"], "bands": ["bands" + args.tag]}[part]


def page(args, section):
    name = PAGES.get(section) or PAGES[next(p for p in ("task1-sweep", "task1-lr", "task1", "bands")
                                            if section.startswith(p))]
    return page_path(args.docs, name)


class Publication:
    """Tables, figures and page sections staged in memory, then written all at once or not at all
    (``replace_all``): a failure anywhere leaves every earlier file as it was."""

    def __init__(self, args):
        self.args, self.files, self.pages = args, {}, {}

    def table(self, stem, df, title):
        base = os.path.join(self.args.results, stem)
        rows = df.astype(object).where(df.notna(), None).to_dict("records")
        self.files[base + ".json"] = json.dumps(rows, indent=2).encode()
        self.files[base + ".csv"] = df.to_csv(index=False).encode()
        self.files[base + ".md"] = f"{title}\n\n{markdown(df)}\n".encode()

    def figure(self, name, fig):
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, dpi=120, format="png")
        plt.close(fig)
        self.files[os.path.join(self.args.figs, name)] = buf.getvalue()

    def section(self, name, text):
        print(f"\n{text}\n", flush=True)
        if self.args.update_docs:
            self.pages.setdefault(page(self.args, name), {})[name] = text

    def add(self, path, text):
        self.files[path] = text.encode()

    def commit(self):
        replace_all({**self.files, **{p: pasted(p, s) for p, s in self.pages.items()}})


def setting(args, seeds=None, epochs=None):
    """The budget every row shares, as a title says it."""
    start = f"fine-tuned from {args.pretrained}" if args.pretrained else "from scratch"
    extra = [f"{epochs} epochs" if epochs else "", f"{args.img_size}px", f"batch {args.batch_size}",
             f"lr {args.lr:g}" if args.lr is not None else "", f"amp {args.amp}" if args.amp != "off" else "",
             f"{args.limit} images per split" if args.limit else "",
             f"seed(s) {', '.join(map(str, seeds or args.seeds))}"]
    return (f"{identity(args)['name']} test split, {args.backbone} backbone {start} "
            f"({machine(args.jobs)}: {', '.join(e for e in extra if e)})")


def frame(args, jobs, records):
    """One row per (row, seed, budget, metric row) of every job that has its record."""
    out = []
    for job in jobs:
        for row, _ in job.evals:
            rec = records.find(row, job.seed, job.epochs, identity(args, job, row))
            if rec:
                out += [{"row": row, "seed": job.seed, "epochs": job.epochs, "val_best": rec["val_best"],
                         "minutes": rec["minutes"], **m} for m in rec["metrics"]]
    if not out:
        raise UserError(f"no finished run of this part under {args.runs} nor a record of one in {args.records} "
                        "(train them first: the same command without --no-train)")
    return pd.DataFrame(out)


def mean_std(df, keys, values):
    """Mean and sample standard deviation (ddof=1, NaN for one seed) over the seeds."""
    g = df.groupby(keys, sort=False)[values]
    return pd.concat([g.mean(), g.std(ddof=1).add_suffix("_std")], axis=1).reset_index().assign(seeds=g.size().values)


def cells(agg, index, values="accuracy", spec=".3f"):
    """'mean ± sd' cells, index x combination, in the order of ``COMBOS``."""
    agg = agg.assign(cell=[plus_minus(m, s if n > 1 else None, spec)
                           for m, s, n in zip(agg[values], agg[values + "_std"], agg["seeds"])])
    table = agg.pivot_table(index=index, columns="combo", values="cell", aggfunc="first", sort=False)
    return table[[c for c in COMBOS if c in table.columns]].fillna("")


def task1_tables(args, jobs, records, pub):
    """The headline: accuracy per combination (mean ± sd over seeds), precision, recall and F1,
    the accuracy at other sizes, and a heat map."""
    df = frame(args, jobs, records)
    df["table_row"] = [EXPERT if r.startswith("expert-") else r for r in df.row]
    metrics = ["accuracy", "precision", "recall", "f1"]
    agg = mean_std(df[df.img_size == args.img_size], ["table_row", "combo"], metrics)
    title = (f"Task 1 on {setting(args, epochs=args.epochs)}; RGB-only rows selected on RGB validation accuracy, "
             "experts on their channel's, dwg on the mean over seven combinations; precision, recall and F1 are "
             "weighted averages over the classes (scikit-learn's 'weighted')")
    pub.table("task1" + args.tag, agg, title)
    shown = cells(agg, "table_row")
    sizes = df[df.row.isin(["plain_zero", "plain_mean", "dwg"])].pivot_table(
        index=["row", "combo"], columns="img_size", values="accuracy", sort=False).reset_index()
    sizes.columns = [f"{c}px" if isinstance(c, int) else c for c in sizes.columns]
    pub.table("task1_sizes" + args.tag, sizes, f"{title}; accuracy of the {args.img_size}px runs at other sizes")
    means = agg.pivot_table(index="table_row", columns="combo", values="accuracy", sort=False)[shown.columns]
    fig, ax = plt.subplots(figsize=(1.5 + 1.05 * len(means.columns), 1.4 + 0.55 * len(means)))
    image = ax.imshow(means.to_numpy(float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in pd.DataFrame(means.to_numpy(float)).stack().items():
        ax.text(j, i, shown.iat[i, j].replace(" ± ", "\n±"), ha="center", va="center", fontsize=8,
                color="white" if v < 0.5 else "black")
    ax.set_xticks(range(len(means.columns)), means.columns)
    ax.set_yticks(range(len(means)), means.index)
    fig.colorbar(image, ax=ax, label="test accuracy")
    ax.set_title(wrap(f"Task 1 test accuracy: {setting(args, epochs=args.epochs)}"), fontsize=8)
    pub.figure(f"task1_accuracy{args.tag}.png", fig)
    detail = agg.assign(**{m: agg[m].round(3) for m in metrics})[["table_row", "combo", *metrics, "seeds"]]
    text = markdown(shown.reset_index(names="model"))
    pub.section("task1" + args.tag, f"{title}; test accuracy, mean ± standard deviation over the seeds\n\n{text}\n\n"
                f"Every metric (means over the seeds):\n\n{markdown(detail, '.3f')}\n\nAccuracy at other sizes "
                f"(mean over the seeds):\n\n{markdown(sizes, '.3f')}")
    if "task1-headline" in sections("task1", args):
        pub.section("task1-headline", f"{title}; test accuracy, mean ± standard deviation over the seeds "
                    f"([every metric and figure](docs/task1-results.md))\n\n{text}")


def wrap(text, width=110):
    """A long title on several lines, so that a figure never cuts it off."""
    words, lines = text.split(), [""]
    for w in words:
        lines[-1:] = [lines[-1] + " " + w] if len(lines[-1]) + len(w) < width else [lines[-1], w]
    return "\n".join(line.strip() for line in lines)


def saturation(val, gain=0.01):
    """The first budget after which doubling the epochs gains less than ``gain``; None if none does."""
    for low in sorted(val):
        if 2 * low in val and val[2 * low] - val[low] < gain:
            return low
    return None


def paired_gaps(df):
    """Each candidate against the specialists, per budget: points by which it is ahead (negative:
    behind) of plain_zero on RGB and of each expert on its channel, mean ± sd of the per-seed
    differences over the seeds both have."""
    acc = df.pivot_table(index=["epochs", "seed"], columns=["row", "combo"], values="accuracy")
    out = []
    for row in [r for r in CANDIDATES if r in acc.columns.get_level_values(0)]:
        for combo in ["RGB", *SINGLE]:
            rival = "plain_zero" if combo == "RGB" else f"expert-{combo}"
            if (row, combo) not in acc or (rival, combo) not in acc:
                continue
            diff = (100 * (acc[(row, combo)] - acc[(rival, combo)])).dropna()
            for epochs, d in diff.groupby(level="epochs"):
                out.append({"row": row, "epochs": epochs, "combo": combo, "gap": d.mean(), "gap_std": d.std(ddof=1),
                            "seeds": len(d)})
    return pd.DataFrame(out)


def epoch_cost(args, row):
    """The bench's price of an epoch of ``row`` (validating as often as its recipe does) against
    plain_zero's, each run alone, for this data, size, batch and the row's flags; None if not timed."""
    path = os.path.join(args.bench, "epoch.json")
    if not os.path.exists(path):
        return None
    for r in read_rows(path, ("data", "img_size", "batch")):
        if (r.get("row"), r["data"], r["img_size"], r["batch"]) == (row, identity(args)["name"], args.img_size,
                                                                args.batch_size) and r.get("flags") == CANDIDATES[row]:
            return r["val_every_epoch_ratio"]
    return None


def sweep_tables(args, jobs, records, pub):
    """Accuracy at every budget, each candidate's gap to the specialists, where plain_zero
    saturates, the figure; the README's rows at ``--headline-budgets`` (default: 30 epochs and
    the saturated budget)."""
    df = frame(args, jobs, records)
    df = df[df.img_size == args.img_size]
    val = df[df.row == "plain_zero"].groupby("epochs")["val_best"].mean().to_dict()
    sat = saturation(val)
    verdict = (f"plain_zero saturates at {sat} epochs (doubling them gains under 1 point of its RGB validation "
               "accuracy)" if sat else f"plain_zero is not saturated within {sorted(val)} epochs")
    title = f"Task 1 budget sweep on {setting(args)}; {verdict}"
    agg = mean_std(df[df.combo.isin(["RGB", *SINGLE])], ["row", "epochs", "combo"], ["accuracy"])
    pub.table("task1_sweep" + args.tag, agg, title + "; test accuracy")
    gaps = paired_gaps(df)
    pub.table("task1_sweep_gaps" + args.tag, gaps, title + "; gap in points to the specialists")
    pub.figure(f"task1_sweep{args.tag}.png", sweep_figure(args, gaps, title))
    text = gap_table(args, gaps, sorted(gaps.epochs.unique()))
    pub.section("task1-sweep" + args.tag, f"{title}; gap in points to the specialist (plain_zero on RGB, each expert "
                f"on its channel; positive: ahead), mean ± sd of the per-seed differences; 'epoch cost': an epoch "
                f"validating as its recipe does, against plain_zero's, from python -m bench --parts epoch, alone\n\n"
                f"{text}\n\nTest accuracy, mean over the seeds:\n\n{accuracy_table(agg)}")
    if "task1-sweep-headline" in sections("task1-sweep", args):
        shown = [e for e in (args.headline_budgets or [30, sat]) if e in set(gaps.epochs)]
        pub.section("task1-sweep-headline", f"{title}; gap in points to the specialist, mean ± sd of the per-seed "
                    f"differences ([every budget and figure](docs/task1-results.md))\n\n{gap_table(args, gaps, shown)}")


def gap_table(args, gaps, budgets):
    rows = []
    for epochs in budgets:
        for row in CANDIDATES:
            g = gaps[(gaps.row == row) & (gaps.epochs == epochs)].set_index("combo")
            if len(g):
                cost = epoch_cost(args, row)
                rows.append({"model": row, "epochs": epochs, **{c: plus_minus(g.gap.get(c), g.gap_std.get(c), "+.1f")
                                                                for c in ["RGB", *SINGLE]},
                             "epoch cost": f"{cost:.2f}x" if cost else "–", "seeds": int(g.seeds.max())})
    return markdown(pd.DataFrame(rows), text=["RGB", *SINGLE, "epoch cost"])


def accuracy_table(agg):
    table = agg.pivot_table(index=["row", "epochs"], columns="combo", values="accuracy", sort=False)
    return markdown(table[[c for c in ["RGB", *SINGLE] if c in table]].reset_index(), ".3f")


def sweep_figure(args, gaps, title):
    """Each candidate's gap to the specialists against the budget, a panel per combination."""
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.8), sharey=True)
    for ax, combo in zip(axes, ["RGB", *SINGLE]):
        for row in CANDIDATES:
            g = gaps[(gaps.row == row) & (gaps.combo == combo)].sort_values("epochs")
            if len(g):
                ax.errorbar(g.epochs, g.gap, yerr=g.gap_std.fillna(0), marker="o", capsize=3, label=row)
        ax.axhline(0, color="gray", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(gaps.epochs.unique()), [str(e) for e in sorted(gaps.epochs.unique())])
        ax.minorticks_off()
        ax.set_title(f"{combo}: against {'plain_zero' if combo == 'RGB' else 'the ' + combo + ' expert'}", fontsize=9)
        ax.set_xlabel("epochs")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gap in points (mean ± sd over seeds)")
    axes[0].legend(fontsize=8)
    fig.suptitle(wrap(title, 160), fontsize=8)
    return fig


def lr_tables(args, jobs, records, pub):
    """plain_zero at each learning rate: the one with the best RGB validation accuracy is picked."""
    rows = []
    for job in jobs:
        rec = records.find(job.row, job.seed, job.epochs, identity(args, job, job.row))
        if rec:
            rows.append({"lr": float(job.flags[job.flags.index("--lr") + 1]), "best val (RGB)": rec["val_best"],
                         "test RGB": accuracy(rec, "RGB", args.img_size), "minutes": rec["minutes"]})
    if not rows:
        raise UserError(f"no finished run of the learning-rate grid under {args.runs} nor a record of one")
    table = pd.DataFrame(rows)
    best = table.loc[table["best val (RGB)"].idxmax(), "lr"]
    title = (f"Task 1 learning rate: plain_zero on {setting(args, args.seeds[:1], args.epochs)}; picked: lr {best:g} "
             "(the best RGB validation accuracy), then given to every row as --lr")
    pub.table("task1_lr" + args.tag, table, title)
    pub.section("task1-lr" + args.tag, f"{title}\n\n{markdown(table)}")


def task2_frame(args, jobs, records):
    df = frame(args, jobs, records)
    base = df[df.row == "resnet34"].set_index(["seed", "epochs"])["accuracy"]
    return df.assign(ratio=[a / base.get((s, e), float("nan")) for a, s, e in zip(df.accuracy, df.seed, df.epochs)])


def task2_tables(args, jobs, records, pub):
    """Every Task 2 row against ResNet34 with the same recipe, and accuracy against MACs."""
    df = task2_frame(args, jobs, records)
    agg = mean_std(df, ["row", "layers", "params", "macs"], ["accuracy", "precision", "recall", "f1", "ratio"])
    title = (f"Task 2 on {setting(args, epochs=args.epochs).replace(f' {args.backbone} backbone from scratch', '')}; "
             "params and MACs at 3x224x224, layers of the deployed model, 'ratio': accuracy / ResNet34's of the seed")
    pub.table("task2", agg, title)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for _, r in agg.iterrows():
        ax.errorbar(r.macs / 1e9, r.accuracy, yerr=r.accuracy_std if r.seeds > 1 else None, fmt="o", capsize=3,
                    label=f"{r.row} ({int(r.layers)} layers)")
    ax.set(xlabel="GMACs at 3x224x224", ylabel="test accuracy", xscale="log")
    ax.legend(fontsize=8)
    ax.set_title(wrap(f"Task 2: accuracy against MACs, {title.split(';')[0][10:]}", 80), fontsize=8)
    pub.figure("task2_acc_vs_macs.png", fig)
    cols = ["row", "layers", "params", "macs", "accuracy", "accuracy_std", "f1", "ratio", "ratio_std", "seeds"]
    pub.section("task2", f"{title}\n\n{markdown(agg[cols])}")


def task2_sweep_tables(args, jobs, records, pub):
    """ResNet34 and the shallow nets at every budget (first seed); shallow_kd at the teacher's."""
    df = task2_frame(args, jobs, records)
    val = df[df.row == "resnet34"].set_index("epochs")["val_best"].to_dict()
    sat = saturation(val)
    verdict = (f"ResNet34 saturates at {sat} epochs (doubling gains under 1 point of validation accuracy)" if sat
               else f"ResNet34 is not saturated within {sorted(val)} epochs; shallow_kd learns from the longest")
    table = df.pivot_table(index="epochs", columns="row", values="accuracy")
    for row in [r for r in table.columns if r != "resnet34"]:
        table[f"{row} / resnet34"] = table[row] / table["resnet34"]
    table = table.reset_index()
    title = (f"Task 2 budget sweep on {setting(args, args.seeds[:1]).replace(f' {args.backbone} backbone', '')}; "
             f"{verdict}; test accuracy")
    pub.table("task2_sweep", table, title)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for row in [r for r in ["resnet34", "shallow", "shallow_deep", "shallow_kd"] if r in table]:
        ax.plot(table.epochs, table[row], marker="o", label=row)
    ax.set(xlabel="epochs", ylabel="test accuracy", xscale="log")
    ax.set_xticks(table.epochs, [str(e) for e in table.epochs])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    ax.set_title(wrap(title, 80), fontsize=8)
    pub.figure("task2_sweep.png", fig)
    text = markdown(table.astype({"epochs": str}))
    pub.section("task2-sweep", f"{title}\n\n{text}")
    pub.section("task2-headline", f"{title} ([every model and the Task 2 table](docs/task2.md))\n\n{text}")


def bands_tables(args, jobs, records, pub):
    """Multi-band data: each row on all bands, RGB, each band alone and each left out (means over
    the bands, then mean ± sd over the seeds), every set in the full table; a figure of each band alone."""
    df, combos = frame(args, jobs, records), jobs[0].combos
    images = len(evenly_spaced(read_list(os.path.join(args.data_root, "test.txt")), args.limit))
    full = mean_std(df, ["row", "combo"], ["accuracy", "f1"])
    alone = [c for c in combos if "+" not in c and not c.startswith("all")]
    kinds = {k: cs for k, cs in [("all", ["all"]), ("RGB", [c for c in combos[1:2] if "+" in c]), ("alone", alone),
                                 ("left_out", [c for c in combos if c.startswith("all-")])] if cs}
    per_seed = pd.concat([df[df.combo.isin(cs)].groupby(["row", "seed"], sort=False).accuracy.mean().rename(k)
                          for k, cs in kinds.items()], axis=1).reset_index()
    table = mean_std(per_seed, ["row"], list(kinds))
    shown = table[["row"]].assign(**{k: [plus_minus(m, sd if n > 1 else None, ".3f") for m, sd, n in zip(
        table[k], table[k + "_std"], table.seeds)] for k in kinds})
    title = (f"{setting(args, epochs=args.epochs)}; small sample: {images} test images, one is {100 / images:.1f} "
             f"points; test accuracy, mean ± sd over the seeds; alone and left_out: means over the {len(alone)} bands")
    pub.table("bands" + args.tag, full, f"{title}; every set")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for row, part in full[full.combo.isin(alone)].groupby("row", sort=False):
        ax.errorbar(range(len(part)), part.accuracy, yerr=part.accuracy_std.fillna(0), marker="o", capsize=2, label=row)
    ax.set_xticks(range(len(alone)), alone, fontsize=7)
    ax.set(xlabel="the one band given", ylabel="test accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.set_title(wrap(f"Each band alone: {title.split('; test accuracy')[0]}", 100), fontsize=7)
    pub.figure(f"bands{args.tag}.png", fig)
    pub.section("bands" + args.tag, f"{title}\n\n{markdown(shown)}")

"""What every table needs: titles that state the budget and the machine, means over seeds,
minutes from the runs' logs, the docs' marked sections."""
import os

import pandas as pd
import torch

from flags import BEFORE_FLAG
from utils.errors import UserError
from utils.report import page_path, update_doc
from utils.validate import log_row, read_log

from .jobs import finished, threads_per_run
from .rows import EQUAL_SIZES, ROWS, SWEEP_RECIPES, trained_dir, trained_recipe

# Which page of docs/ holds each section the parts paste (a Task 1 section with a tag, e.g.
# task1-32px, too); the headlines and the Task 2 recipe stand on the front page.
DOC_PAGES = {"task1-headline": "../README.md", "task1-sweep-headline": "../README.md", "task2-headline": "../README.md",
             "task2-recipe": "../README.md", "task1": "task1.md", "task2": "task2.md"}


def doc_page(args, section):
    return page_path(args.docs, DOC_PAGES.get(section) or DOC_PAGES[section.split("-")[0]])


def paste(args, section, text):
    """The table also goes into its marked section of the docs, when asked (``--update-docs``)."""
    if args.update_docs:
        update_doc(section, text, doc_page(args, section))


def on_front_page(args):
    """Whether this setting's Task 1 tables go on the README: the main one, or a tagged one asked for."""
    return not args.tag or args.front_page


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


def run_log(out):
    """The log.csv of the run in folder ``out``, a row per whole epoch (a cut or damaged row left out)."""
    path = os.path.join(out, "log.csv")
    header, rows = read_log(path)
    if not {"epoch", "val_acc", "seconds"} <= set(header):
        raise UserError(f"{path}: no epoch, val_acc and seconds columns; not the log of a run")
    return pd.DataFrame([r for r in rows if log_row(r, header)], columns=header).astype(float)


def wall_minutes(log):
    """A run's wall time from its log: training and validation, whatever else shared the cores."""
    return log["seconds"].sum() / 60


def run_logs(args, name, seeds):
    """The log.csv of each finished run behind row ``name``, over ``seeds``."""
    row = ROWS[name]
    return [run_log(trained_dir(args, row, s)) for s in seeds if finished(args, row, s)]


def train_seconds(args, row, seed):
    """Training time of a row's checkpoint from its log, plus that of the row it started from."""
    source = ROWS.get(row.same_as, row)  # an equal-time row reuses one that is not in ROWS
    return run_log(trained_dir(args, row, seed))["seconds"].sum() + (train_seconds(args, ROWS[source.init], seed)
                                                                     if source.init else 0)


def timed_as(bench_row, recipe):
    """Whether a row of the bench's epoch table timed ``recipe`` (a run's flags): its sandwich
    options as recorded, and its subset draws."""
    keys = [k for k in bench_row if k.startswith("sandwich_")]
    return all(recipe.get(k, BEFORE_FLAG.get(k)) == bench_row[k] for k in keys) and \
        recipe.get("single_prob", BEFORE_FLAG["single_prob"]) == timed_draws(bench_row)


def timed_draws(bench_row):
    """The subset draws a bench epoch row timed. Rows written before the bench recorded them
    timed what their names spelled then: the sweep's recipes as they still do, dwg its earlier
    default (every size equally often)."""
    if "single_prob" in bench_row:
        return bench_row["single_prob"]
    flags = SWEEP_RECIPES.get(bench_row.get("model"), EQUAL_SIZES)
    return trained_recipe("train_dw.py", ["--model", "dwg", *flags])["single_prob"]

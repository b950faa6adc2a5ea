"""The tables and figures of docs/, every row trained and evaluated by the entry scripts:

    python -m experiments.results --part task1|task1-sweep|task1-lr|task2|task2-sweep|bands [--plan] [--update-docs]

What each part trains is in runs.py, one script and its flags per row; this command adds the
budget they share. Runs go to ``<out>/<task>/<row>-e<epochs>-s<seed>/`` (``--jobs`` at once, each
with cores/jobs threads; a finished run is reused, an interrupted one resumed), each is evaluated
by its test script and kept as a record (records.py: its numbers without its weights), and the
tables are made from the records (tables.py): into ``<out>/tables`` and ``<out>/figs``, or, with
``--update-docs``, into results/, figs/, each table's marked section of docs/ and the README,
and the records into results/, all written together or not at all. ``--no-train`` makes the
tables from the records and finished runs alone; ``--plan`` lists the runs and trains nothing.
"""
import os

from flags import add_amp, add_data_root, add_limit, add_workers
from utils.errors import MAX_EPOCHS, Parser, at_least, cli, float_list, img_side, int_list
from utils.report import check_doc_sections

from .jobs import run_jobs, status
from .records import Records, identity
from .runs import bands_jobs, lr_jobs, sweep_jobs, task1_jobs, task2_jobs, task2_sweep_jobs
from .tables import (
    Publication,
    bands_tables,
    lr_tables,
    page,
    saturation,
    sections,
    sweep_tables,
    task1_tables,
    task2_sweep_tables,
    task2_tables,
)

PARTS = {"task1": (task1_jobs, task1_tables), "task1-sweep": (sweep_jobs, sweep_tables),
         "task1-lr": (lr_jobs, lr_tables), "task2": (task2_jobs, task2_tables),
         "task2-sweep": (task2_sweep_jobs, task2_sweep_tables), "bands": (bands_jobs, bands_tables)}


def parse_args(argv):
    p = Parser(prog="python -m experiments.results", description=__doc__)
    p.add_argument("--part", default="task1", choices=list(PARTS),
                   help="task1: the headline rows at --epochs; task1-sweep: every candidate and specialist at every "
                        "--budgets; task1-lr: plain_zero at every --lrs; task2: the Task 2 rows; task2-sweep: ResNet34 "
                        "and the shallow nets at every --budgets; bands: a multi-band root's rows (docs/multiband.md)")
    add_data_root(p, "synthetic")
    p.add_argument("--backbone", default="small", help="Task 1's body: small|resnet18|densenet121")
    p.add_argument("--pretrained", default=None, help="Task 1 rows fine-tune these weights (imagenet, or our "
                                                      "checkpoint or run folder); Task 2 trains from scratch")
    p.add_argument("--epochs", type=at_least(1, high=MAX_EPOCHS), default=30, help="task1, task1-lr, task2")
    p.add_argument("--budgets", default="3,6,12,24,48", type=int_list(1), help="the sweeps' epochs, a run each")
    p.add_argument("--headline-budgets", default=None, type=int_list(1),
                   help="task1-sweep: the budgets of the README's rows (default: 30 and where plain_zero saturates)")
    p.add_argument("--seeds", default="0", type=int_list(0))
    p.add_argument("--img-size", type=img_side, default=32)
    p.add_argument("--batch-size", type=at_least(1), default=64)
    p.add_argument("--lr", type=at_least(0.0, float, high=1e30), default=None,
                   help="every row's peak learning rate (default: the scripts')")
    p.add_argument("--lrs", default="0.003,0.01,0.03,0.1", type=float_list(0.0, 1e30), help="task1-lr: the grid")
    add_amp(p)
    add_workers(p, 1, "loader processes per run")
    add_limit(p, "images per split for every run (evenly spaced): a trial of the whole command")
    p.add_argument("--jobs", type=at_least(1), default=1, help="runs at once, each with cores/jobs threads")
    p.add_argument("--out", dest="runs", default="runs/results", help="the runs, their evaluations and records")
    p.add_argument("--no-train", action="store_true", help="tables from the records and finished runs alone")
    p.add_argument("--plan", action="store_true", help="list the runs the command needs; train and write nothing")
    p.add_argument("--update-docs", action="store_true",
                   help="publish: tables to results/, figures to figs/, records to --records, sections of --docs")
    p.add_argument("--docs", default="docs", help="the pages' folder (or one page) whose marked sections are replaced")
    p.add_argument("--results", default=None, help="tables (default: <out>/tables, or results/ with --update-docs)")
    p.add_argument("--figs", default=None, help="figures (default: <out>/figs, or figs/ with --update-docs)")
    p.add_argument("--records", default=None, help="the published records (default: results/<task><tag>_runs.json)")
    p.add_argument("--bench", default="results/bench", help="the bench's tables (the epoch cost of each recipe)")
    p.add_argument("--tag", default="", help="a setting's name, the suffix of its tables, figures, sections and "
                                             "records (e.g. scratch: task1_sweep-scratch.md)")
    p.add_argument("--front-page", action="store_true", help="a tagged setting's headline goes on the README too")
    args = p.parse_args(argv)
    args.tag = f"-{args.tag.strip('-')}" if args.tag.strip("-") else ""
    args.results = args.results or ("results" if args.update_docs else os.path.join(args.runs, "tables"))
    args.figs = args.figs or ("figs" if args.update_docs else os.path.join(args.runs, "figs"))
    task = "task2" if args.part.startswith("task2") else ("bands" if args.part == "bands" else "task1") + args.tag
    args.records = args.records or os.path.join("results", f"{task}_runs.json")
    args.own_records = os.path.join(args.runs, f"records-{task}.json")
    return args


def teacher_epochs(args, records):
    """The budget whose ResNet34 shallow_kd distils from: where ResNet34 saturates on validation,
    else the longest; None until every ResNet34 of the sweep has a record."""
    val = {}
    for job in [j for j in task2_sweep_jobs(args) if j.row == "resnet34"]:
        rec = records.find(job.row, job.seed, job.epochs, identity(args, job, job.row))
        if rec:
            val[job.epochs] = rec["val_best"]
    return (saturation(val) or max(args.budgets)) if len(val) == len(args.budgets) else None


def plan(args, jobs, records):
    print(f"plan: {len(jobs)} runs of --part {args.part} (nothing is trained, evaluated or written)\n")
    counts, left = {}, 0
    for j in jobs:
        done = all(records.find(r, j.seed, j.epochs, identity(args, j, r)) for r, _ in j.evals)
        state = "recorded" if done else status(args, j)
        counts[state] = counts.get(state, 0) + 1
        left += j.epochs * (state not in ("recorded", "finished"))
        print(f"{state:>15}  {j.script} {' '.join(j.all_flags)} --out {j.out}")
    print(f"\n{len(jobs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {left} epochs to train")


@cli
def main(argv=None):
    args = parse_args(argv)
    make_jobs, make_tables = PARTS[args.part]
    records = Records(args.records, args.own_records)
    jobs = make_jobs(args)
    if args.plan:
        if args.part == "task2-sweep":
            jobs += make_jobs(args, teacher_epochs(args, records) or max(args.budgets))[-1:]
        plan(args, jobs, records)
        return 0
    if args.update_docs:  # every page checked before anything trains, and again as it is written
        check_doc_sections({s: page(args, s) for s in sections(args.part, args)})
    if args.part == "task2-sweep":
        run_jobs(args, jobs, records)
        epochs = teacher_epochs(args, records)
        jobs = make_jobs(args, epochs) if epochs else jobs
    run_jobs(args, jobs, records)
    pub = Publication(args)
    make_tables(args, jobs, records, pub)
    if args.update_docs:
        pub.add(args.records, records.merged())
    pub.commit()
    return 0

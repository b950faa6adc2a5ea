"""The result tables and figures of docs/: every row trained and evaluated by the entry scripts.

    python -m experiments.results [--part task1|task1-ablation|task1-sandwich|task1-resnet18|task2|task2-sweep|
                                          task2-headline|task2-recipe|all]
                                  [--data-root DIR] [--backbone small] [--pretrained imagenet] [--img-size 64]
                                  [--epochs 6] [--batch-size 64] [--lr 0.1] [--amp bf16] [--seeds 0,1,2]
                                  [--budgets 6,12,24,48] [--jobs 2] [--no-train] [--models ROW,...]
                                  [--out runs/results] [--update-docs] [--plan [--plan-rates FILE]]

Trains every row with the repository's own entry scripts (<out>/task1/<row>-s<seed>/ and so on,
resumable: a finished run is reused, an interrupted one resumed; ``--jobs`` runs at once, each
with cores/jobs threads), evaluates it with test_dw.py/test_rrdb.py (an evaluation newer than its
checkpoints is reused), and writes the tables (.md, .json, .csv) to <out>/tables/ and the figures
to <out>/figs/; titles state the data and the settings. ``--update-docs`` publishes instead: the
tables to results/, the figures to figs/ and each table into its marked section of docs/.
The budget sweep also keeps each finished run's numbers and recipe, without its weights, in
results/task1_sweep_runs.json when it publishes: another machine continues the sweep from there.
``--no-train`` makes the tables from the finished runs only (Task 1 rows; sweep budgets whose
ResNet34 has finished). ``--plan`` trains, evaluates and writes nothing: it lists every run the
command would train or reuse, with the disk its checkpoints take and, from the bench's rates on
this machine, the hours. Never run by CI, except end-to-end tests at toy size.

What to train is in rows.py and in each part's ``runs`` (parts.py), running the jobs in jobs.py,
the tables and figures in task1.py and task2.py (what they share in tables.py), the plan in
plan.py; this module reads the command line.
"""
import os

from flags import add_amp, add_data_root, add_limit, add_workers
from utils.errors import MAX_EPOCHS, Parser, UserError, at_least, cli, img_side, int_list, non_empty
from utils.report import check_doc_sections

from .jobs import train_runs
from .parts import PARTS, doc_sections, parts_of
from .plan import print_plan
from .rows import ABLATION_NAMES, RESNET18_ROWS, SANDWICH_ROWS, SWEEP_ROWS, TASK1_ROWS
from .tables import doc_page, on_front_page


def parse_args(argv):
    p = Parser(prog="python -m experiments.results", description=__doc__)
    p.add_argument("--part", default="all",
                   choices=[*PARTS, "all"],
                   help="which table(s); all: every part in turn, both budget sweeps and the recipe table "
                        "included; task2-headline re-pastes the front page's Task 2 rows from the sweep's written "
                        "table (with --update-docs)")
    p.add_argument("--budgets", default="6,12,24,48", type=int_list(1),
                   help="task1-sweep, task2-sweep: epochs per run, one run per budget")
    add_data_root(p, "synthetic")
    p.add_argument("--seeds", default="0", type=int_list(0))
    p.add_argument("--backbone", default="small", help="body of the Task 1 rows: small|resnet18|densenet121")
    p.add_argument("--pretrained", default=None, help="Task 1 rows start from these weights (e.g. imagenet); "
                                                      "Task 2 trains from scratch")
    p.add_argument("--epochs", type=at_least(1, high=MAX_EPOCHS), default=6)
    p.add_argument("--img-size", type=img_side, default=64)
    p.add_argument("--batch-size", type=at_least(1), default=64)
    p.add_argument("--lr", type=at_least(0.0, float, high=1e30), default=None,
                   help="peak learning rate (default: the scripts')")
    add_amp(p)
    add_workers(p, 1, "loader processes per run")
    add_limit(p, "images per split for every run (evenly spaced): a trial of the whole command")
    p.add_argument("--models", default=None, type=non_empty,
                   help="only these rows (comma-separated names; default every row of the part)")
    p.add_argument("--no-train", action="store_true",
                   help="tables from the finished runs only: Task 1 rows; sweep budgets whose ResNet34 has finished, "
                        "a shallow run still training shown as a dash")
    p.add_argument("--jobs", type=at_least(1), default=1,
                   help="runs trained (and evaluated) at once, each with cores/jobs threads")
    p.add_argument("--out", "--runs", dest="runs", default="runs/results",
                   help="runs (checkpoints, logs, evaluations) and, unless --update-docs, tables and figures")
    p.add_argument("--results", default=None, help="tables (default: <out>/tables, or results/ with --update-docs)")
    p.add_argument("--figs", default=None, help="figures (default: <out>/figs, or figs/ with --update-docs)")
    p.add_argument("--bench", default="results/bench",
                   help="the bench's tables (step and epoch cost ratios; its model part's rates for --plan)")
    p.add_argument("--update-docs", action="store_true",
                   help="publish: tables to results/, figures to figs/, and each table into its marked section "
                        "of --docs (docs/*.md)")
    p.add_argument("--docs", default="docs", help="the folder (or one file) whose marked sections are replaced")
    p.add_argument("--records", default=None, metavar="FILE",
                   help="task1-sweep: the finished runs kept without their weights, read always (a recorded run is "
                        "not trained again), extended with --update-docs (default: results/task1_sweep_runs.json, "
                        "or under --results when publishing)")
    p.add_argument("--tag", default="", help="suffix of the Task 1 table's files and docs section (e.g. -32px)")
    p.add_argument("--front-page", action="store_true",
                   help="with --update-docs and --tag: this setting's Task 1 tables also go on the README (the "
                        "main setting, without --tag, always does; the sweep's only from a saturated budget)")
    p.add_argument("--plan", action="store_true",
                   help="train, evaluate and write nothing: list every run the command would train or reuse, with "
                        "the disk its checkpoints need and the hours the bench's rates give")
    p.add_argument("--plan-rates", default=None, metavar="FILE",
                   help="with --plan: the training-step rates of python -m bench --parts model (its model.json), "
                        "whatever machine measured them (default: <--bench>/model.json, if measured on this one)")
    args = p.parse_args(argv)
    args.results = args.results or ("results" if args.update_docs else os.path.join(args.runs, "tables"))
    args.figs = args.figs or ("figs" if args.update_docs else os.path.join(args.runs, "figs"))
    return args


# The rows --models may pick, by part.
PART_ROWS = {"task1": [r.name for r in TASK1_ROWS], "task1-sweep": [r.name for r in SWEEP_ROWS] + ["sandwich-full"],
             "task1-ablation": list(ABLATION_NAMES), "task1-sandwich": ["plain_zero", *(r.name for r in SANDWICH_ROWS)],
             "task1-resnet18": [r.name for r in RESNET18_ROWS]}
PART_ROWS["all"] = list(dict.fromkeys(n for rows in PART_ROWS.values() for n in rows))


def check_models(args):
    """Refuse, before anything is written, a --models name that is not a row of the part."""
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    rows = PART_ROWS.get(args.part)
    if rows is None:
        raise UserError(f"--models picks Task 1 rows; --part {args.part} has none to pick")
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise UserError(f"--models {', '.join(unknown)}: not a row of --part {args.part} (its rows: {', '.join(rows)})")
    args.models = ",".join(names)


def check_destinations(args, parts):
    """Publishing is all or nothing: every page section and folder it writes is checked before
    the first table is replaced."""
    if args.update_docs:
        sections = [s for part in parts for s in doc_sections(part, args.tag, on_front_page(args))]
        check_doc_sections({s: doc_page(args, s) for s in sections})
    for folder, flag in ((args.results, "--results"), (args.figs, "--figs")):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot write into {flag} {folder}: {exc.strerror or exc}") from None


@cli
def main(argv=None):
    args = parse_args(argv)
    if args.models:
        check_models(args)
    if args.plan_rates and not args.plan:
        raise UserError("--plan-rates goes with --plan")
    if args.plan:
        print_plan(args)
        return 0
    check_destinations(args, parts_of(args))
    for part in parts_of(args):
        if not args.no_train:  # each stage once the stages before it have trained
            for stage in PARTS[part].runs(args, args.seeds):
                train_runs(args, stage())
        PARTS[part].tables(args, args.seeds)
    return 0

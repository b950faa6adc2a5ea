"""The budget sweep's finished runs kept without their weights, so that a sweep outlives the
machine that trained it: results/task1_sweep_runs.json, extended each time the sweep publishes.

A record holds what the sweep's tables read from a run (test accuracy per combination, best
validation accuracy, wall minutes) and what made the run: every flag that can change what it
learned (as train.py fills them in), the evaluation flags, the data's name and the machine as the
titles name it. A run is taken from its record, and not trained again, only when all of that is
this command's; a record of other settings stays in the file and is never mixed into a table.
"""
import json
import os

from flags import BEFORE_FLAG
from utils.errors import UserError
from utils.report import write_text
from utils.validate import check, read_rows

from .jobs import NO_EFFECT, trained_recipe
from .tables import data_name, machine

FIELDS = ("run", "seed", "made", "accuracy", "val_best", "minutes")


def records_path(args):
    """--records, else the published file: results/ (or --results when publishing elsewhere); one
    file for every setting (--tag) of the sweep, each record saying how it was made."""
    folder = args.results if args.update_docs else "results"
    return args.records or os.path.join(folder, "task1_sweep_runs.json")


def made(args, run, eval_flags):
    """What makes a run's numbers: its recipe (the data's path aside: the same photos live in
    another folder on another machine), how it is evaluated, the data's name and the machine."""
    recipe = {k: v for k, v in trained_recipe(run.script, [*run.common, *run.extra]).items()
              if k not in NO_EFFECT and k != "data_root"}
    return json.loads(json.dumps({"recipe": recipe, "eval": list(eval_flags), "data": data_name(args),
                                  "machine": machine(args)}, sort_keys=True, default=str))


def _checked(path, i, record):
    """One record of the file, each field of the kind and within the bounds the sweep writes."""
    name = f"{path}: record {i}"
    try:
        check(f"{name} 'run'", record["run"], str)
        check(f"{name} 'seed'", record["seed"], int, low=0)
        check(f"{name} 'made'", record["made"], dict)
        check(f"{name} 'accuracy'", record["accuracy"], dict)
        for combo, acc in record["accuracy"].items():
            check(f"{name} accuracy of {combo}", acc, float, low=0, high=1)
        if record["val_best"] is not None:
            check(f"{name} 'val_best'", record["val_best"], float, low=0, high=1)
        check(f"{name} 'minutes'", record["minutes"], float, low=0)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{exc}; not a file this project wrote, or a damaged one") from None
    return record


def _spelled_today(made):
    """A record written before a recipe flag existed trained with the value runs had before it
    (``BEFORE_FLAG``): said so, a new flag leaves the records of earlier runs usable."""
    recipe = made.get("recipe")
    if not isinstance(recipe, dict):  # a hand-made record without a recipe matches no run either way
        return made
    older = {k: v for k, v in BEFORE_FLAG.items() if k not in NO_EFFECT and k not in recipe}
    return {**made, "recipe": {**older, **recipe}}


def _key(record):
    """A record's identity: its run, seed and making (records of one run made otherwise coexist)."""
    return record["run"], record["seed"], json.dumps(record["made"], sort_keys=True)


def load_records(args):
    """Every record of the file (none before the first publish); two records of one run made
    alike would leave the tables to pick one: refused."""
    path = records_path(args)
    if not os.path.exists(path):
        return []
    records = [_checked(path, i, r) for i, r in enumerate(read_rows(path, FIELDS))]
    records = [{**r, "made": _spelled_today(r["made"])} for r in records]
    seen = {}
    for i, r in enumerate(records):
        key = _key(r)
        if key in seen:
            raise UserError(f"{path}: record {i} repeats record {seen[key]} (run {r['run']}, seed {r['seed']}, made "
                            "alike); keep one")
        seen[key] = i
    return records


def check_combos(args, record, combos):
    """A record used in a table holds exactly the combinations its row is evaluated on."""
    missing = [c for c in combos if c not in record["accuracy"]]
    extra = [c for c in record["accuracy"] if c not in combos]
    if missing or extra:
        wrong = f"no accuracy of {', '.join(missing)}" if missing else f"an accuracy of {', '.join(extra)} too"
        raise UserError(f"{records_path(args)}: the record of {record['run']}, seed {record['seed']} has {wrong}; "
                        "a damaged record")
    return record


def find(records, name, seed, making):
    """The record of run ``name`` with ``seed`` made as ``making``, or None."""
    return next((r for r in records if (r["run"], r["seed"], r["made"]) == (name, seed, making)), None)


def merge(records, new):
    """``records`` with each of ``new`` in place of its older record (same run, seed and making)."""
    fresh = {_key(r) for r in new}
    kept = [r for r in records if _key(r) not in fresh]
    return kept + list(new)


def save_records(args, records):
    """Write the file whole, sorted, atomically: a kill leaves the old file or the new one."""
    order = sorted(records, key=_key)
    write_text(records_path(args), json.dumps(order, indent=1, sort_keys=True) + "\n")

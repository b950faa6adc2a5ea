"""The parts of the command: what each trains (stages of runs) and the tables it then makes."""
from dataclasses import dataclass

from .task1 import (
    ablation_rows,
    one_stage,
    resnet18_rows,
    sandwich_rows,
    task1,
    task1_ablation,
    task1_remarks,
    task1_resnet18,
    task1_runs,
    task1_sandwich,
)
from .task1_sweep import sweep_runs, task1_sweep
from .task2 import recipe_runs, sweep2_runs, task2, task2_headline, task2_recipe, task2_runs, task2_sweep


@dataclass
class Part:
    """``tables(args, seeds)`` makes the part's tables from its finished runs; ``runs(args, seeds)``
    lists what it trains as stages, each a function -> [Run] called once the stages before it have
    trained (a later stage may depend on their results); ``remarks(args, seeds)`` are lines for
    --plan about runs the part leaves out."""
    tables: object
    runs: object = lambda args, seeds: []
    remarks: object = lambda args, seeds: []


PARTS = {"task1": Part(task1, task1_runs, task1_remarks),
         "task1-sweep": Part(task1_sweep, sweep_runs),
         "task1-ablation": Part(task1_ablation, one_stage(ablation_rows)),
         "task1-sandwich": Part(task1_sandwich, one_stage(sandwich_rows)),
         "task1-resnet18": Part(task1_resnet18, one_stage(resnet18_rows)),
         "task2": Part(task2, task2_runs),
         "task2-sweep": Part(task2_sweep, sweep2_runs),
         "task2-recipe": Part(task2_recipe, lambda args, seeds: [lambda: list(recipe_runs(args, seeds[0]).values())]),
         "task2-headline": Part(lambda args, seeds: task2_headline(args))}
# ``all`` runs the parts in this order (the Task 2 sweep pastes the front page's Task 2 rows
# itself: task2-headline only re-pastes them from its table).
ALL = [p for p in PARTS if p != "task2-headline"]


def parts_of(args):
    return ALL if args.part == "all" else [args.part]


def doc_sections(part, tag="", front=True):
    """The sections of the docs that ``part`` pastes its tables into (``--update-docs``); ``front``:
    its Task 1 tables also go on the README (``tables.on_front_page``)."""
    return {"task1": ["task1" + tag, *["task1-headline"] * front],
            "task1-sweep": ["task1-sweep" + tag, *["task1-sweep-headline"] * front],
            "task1-ablation": ["task1-ablation"], "task1-sandwich": ["task1-sandwich"],
            "task1-resnet18": ["task1-resnet18"], "task2": ["task2"], "task2-sweep": ["task2-sweep", "task2-headline"],
            "task2-recipe": ["task2-recipe"], "task2-headline": ["task2-headline"]}[part]

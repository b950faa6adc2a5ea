"""The front page and docs/ as a reader meets them: under CommonMark (GitHub's renderer) every
heading renders and every code block closes, every relative link and image resolves, and every
``python ...`` command shown parses with the argument parser of the script it names."""
import glob
import os
import re
import shlex

import pytest
from markdown_it import MarkdownIt

from conftest import ROOT

PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def _tokens(path):
    with open(path) as f:
        text = f.read()
    return text, MarkdownIt("commonmark").parse(text)


@pytest.mark.parametrize("path", PAGES, ids=os.path.basename)
def test_every_heading_renders_and_every_code_block_closes(path):
    text, tokens = _tokens(path)
    lines = text.splitlines()
    fences = [t for t in tokens if t.type == "fence"]
    for fence in fences:  # an unclosed fence runs to the end of the page, swallowing what follows
        assert re.match(r"\s*(```|~~~)", lines[fence.map[1] - 1]), f"{path}:{fence.map[0] + 1}: code block not closed"
    inside = {i for f in fences for i in range(*f.map)}
    written = [i for i, line in enumerate(lines) if re.match(r"#{1,6} ", line) and i not in inside]
    rendered = [t.map[0] for t in tokens if t.type == "heading_open"]
    assert rendered == written


def _links(tokens):
    for t in tokens:
        for child in t.children or []:
            if child.type == "link_open":
                yield child.attrGet("href")
            elif child.type == "image":
                yield child.attrGet("src")


@pytest.mark.parametrize("path", PAGES, ids=os.path.basename)
def test_every_relative_link_resolves(path):
    _, tokens = _tokens(path)
    for link in _links(tokens):
        target = link.split("#")[0]
        if not target or re.match(r"[a-z]+:", target):
            continue
        assert os.path.exists(os.path.join(os.path.dirname(path), target)), f"{path}: broken link {link}"


def _commands():
    """(page, command line) for every ``python ...`` line in a code block, continuations joined."""
    for path in PAGES:
        _, tokens = _tokens(path)
        for fence in (t for t in tokens if t.type == "fence"):
            joined = re.sub(r"\\\n\s*", " ", fence.content)
            for line in joined.splitlines():
                line = line.split(" #")[0].strip().lstrip("$ ").strip()
                if re.match(r"(torchrun .*?|python3? )\S+\.py|python3? -m \w", line):
                    yield os.path.basename(path), line


def _parser(target):
    """The function that parses a script's flags, as the script itself calls it."""
    import importlib
    if target in ("train_dw.py", "train_rrdb.py"):
        import flags
        from data import DEFAULT_COMBOS
        task1 = target == "train_dw.py"
        parser = flags.build_parser("", "dwg" if task1 else "shallow", ",".join(DEFAULT_COMBOS) if task1 else "RGB")
        return parser.parse_args
    return importlib.import_module(target.removesuffix(".py").replace("/", ".")).parse_args


@pytest.mark.parametrize("page, command", list(_commands()))
def test_every_command_shown_parses(page, command):
    words = shlex.split(re.sub(r"\$\{?(\w+)\}?", r"X\1", command.split(";")[0]))
    words = words[words.index(next(w for w in words if w.endswith(".py") or w == "-m")):]
    target, argv = (words[1], words[2:]) if words[0] == "-m" else (words[0], words[1:])
    if target == "torch.distributed.run":
        return
    _parser(target)(argv)  # argparse exits (status 2) on a flag the script does not have


def test_pasting_a_table_on_a_full_disk_keeps_the_page(tmp_path, monkeypatch):
    """A page is replaced whole or not at all (written beside it, then renamed); a page reached
    through a link is written where the link points, and the link stays."""
    import errno

    from utils.errors import UserError
    from utils.report import update_doc
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- task1:start -->\nold\n<!-- task1:end -->\nend\n")
    link = tmp_path / "link.md"
    link.symlink_to(page)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full)
        with pytest.raises(UserError, match="No space left on device; nothing was replaced"):
            update_doc("task1", "new table", str(link))
    assert page.read_text() == "intro\n<!-- task1:start -->\nold\n<!-- task1:end -->\nend\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.md", "page.md"]
    update_doc("task1", "new table", str(link))
    assert link.is_symlink() and page.read_text() == "intro\n<!-- task1:start -->\nnew table\n<!-- task1:end -->\nend\n"


def test_every_section_a_part_publishes_is_marked_in_the_docs():
    """The sections checked before publishing are those the parts paste, and each has its markers."""
    import argparse

    from experiments.results import PARTS
    from experiments.results.tables import page, sections
    from utils.report import check_doc_sections
    settings = {"": list(PARTS), "-scratch": ["task1-sweep"], "-resnet18": ["task1"]}  # each as docs publish it
    for tag, parts in settings.items():
        args = argparse.Namespace(docs=os.path.join(ROOT, "docs"), tag=tag, front_page=False)
        check_doc_sections({s: page(args, s) for part in parts for s in sections(part, args)})


def test_publishing_to_missing_pages_replaces_no_table(tmp_path, capsys):
    """--update-docs checks every page it pastes into before the first table or figure is
    replaced: with --docs naming nothing, the published files keep their bytes."""
    from conftest import file_hashes
    from experiments import results
    published = {"results": tmp_path / "results", "figs": tmp_path / "figs"}
    for folder in published.values():
        folder.mkdir()
    for name in ("task1.json", "task1.md", "task2_sweep.json", "task2_sweep.md"):
        (published["results"] / name).write_text(f"the published {name}\n")
    (published["figs"] / "task1_accuracy.png").write_bytes(b"\x89PNG a figure")
    before = {k: file_hashes(v) for k, v in published.items()}
    with pytest.raises(SystemExit) as exc:
        results.main(["--part", "task1", "--no-train", "--update-docs", "--docs", str(tmp_path / "missing"),
                      "--results", str(published["results"]), "--figs", str(published["figs"]),
                      "--out", str(tmp_path / "runs"), "--data-root", "synthetic"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "to update its task1 section" in err[0]
    assert {k: file_hashes(v) for k, v in published.items()} == before
    assert not (tmp_path / "runs").exists()


def test_front_page_docs_and_results_driver_stay_short():
    """The sizes a reader can hold: the README a front page, each docs page one subject, the
    results driver a list of runs rather than a framework."""
    sizes = {os.path.basename(p): len(open(p).read()) for p in PAGES}
    assert sizes["README.md"] <= 10_000
    assert max(n for name, n in sizes.items() if name != "README.md") <= 30_000
    driver = glob.glob(os.path.join(ROOT, "experiments", "**", "*.py"), recursive=True)
    assert sum(len(open(p).read().splitlines()) for p in driver) <= 1_000

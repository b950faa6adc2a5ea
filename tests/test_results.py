"""python -m experiments.results at toy size: the runs each part trains, their records, tables
made from the records alone, stale runs refused, and publishing all or nothing."""
import json
import os
import stat

import pytest

from conftest import file_hashes, make_list_root
from experiments import results
from experiments.results import jobs, tables
from experiments.results.runs import SWEEP_ROWS, TASK1_ROWS


def _refused(capsys, *argv):
    """The one error line of a command that exits 2."""
    with pytest.raises(SystemExit) as exc:
        results.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]

SECTIONS = ["task1", "task1-headline", "task1-sweep", "task1-sweep-headline", "task1-lr", "task2", "task2-sweep",
            "task2-headline"]


def _page(path, eol="\n"):
    text = "".join(f"<!-- {s}:start -->{eol}old {s}{eol}<!-- {s}:end -->{eol}" for s in SECTIONS)
    path.write_bytes(f"intro{eol}{text}end{eol}".encode())
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A list root and the flags every call shares (one page for every section)."""
    base = tmp_path_factory.mktemp("results")
    root = make_list_root(base / "data", classes=3, per_class=6, size=24)
    flags = ["--epochs", "1", "--img-size", "16", "--batch-size", "4", "--workers", "0", "--jobs", "2",
             "--data-root", str(root), "--out", str(base / "runs"), "--bench", str(base / "bench")]
    return base, root, flags


def _publish(base, flags, *extra):
    return results.main([*flags, "--update-docs", "--docs", str(base / "page.md"), "--results", str(base / "tables"),
                         "--figs", str(base / "figs"), "--records", str(base / "records.json"), *extra])


def test_the_plan_lists_the_commands_training_starts_and_writes_nothing(toy, monkeypatch, capsys):
    base, _, flags = toy
    started = []
    monkeypatch.setattr(jobs, "sh", lambda *cmd, threads=None: started.append(" ".join(cmd)))
    for part, n in (("task1", len(TASK1_ROWS)), ("task1-sweep", 2 * len(SWEEP_ROWS)), ("task1-lr", 2), ("task2", 5)):
        argv = ["--part", part, *flags, "--budgets", "1,2", "--lrs", "0.01,0.1", "--out", str(base / "plan")]
        assert results.main([*argv, "--plan"]) == 0
        printed = capsys.readouterr().out
        assert f"plan: {n} runs of --part {part}" in printed and f"{n} new" in printed
        args = results.parse_args(argv)
        started.clear()
        for job in results.PARTS[part][0](args):
            jobs.train(args, job)
        assert len(started) == n and all(cmd.removesuffix(" --overwrite") in printed for cmd in started)
    assert not (base / "plan").exists()


def test_task1_parts_train_record_and_publish(toy, capsys):
    """The headline and the learning-rate grid at toy size: every table, the figure, the page's
    sections (its other lines kept byte for byte, CRLF and mode included) and the records."""
    base, root, flags = toy
    page = _page(base / "page.md", "\r\n")
    os.chmod(page, 0o600)
    assert _publish(base, ["--part", "task1", *flags]) == 0
    text = page.read_bytes().decode()
    assert text.startswith("intro\r\n") and text.endswith("end\r\n") and "\n" not in text.replace("\r\n", "")
    assert "old task1\r\n" not in text and "old task1-headline" not in text and "old task2" in text
    assert stat.S_IMODE(os.stat(page).st_mode) == 0o600
    headline = text.split("<!-- task1-headline:start -->")[1].split("<!-- task1-headline:end -->")[0]
    assert "| dwg " in headline and "expert (its channel)" in headline and "fine-tuned" not in headline
    rows = json.loads((base / "tables" / "task1.json").read_text())
    assert {r["table_row"] for r in rows} == {"plain_zero", "plain_mean", "expert (its channel)", "dwg"}
    assert {"accuracy", "precision", "recall", "f1"} <= set(rows[0])
    assert (base / "figs" / "task1_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    records = json.loads((base / "records.json").read_text())
    assert sorted(r["row"] for r in records) == sorted([*TASK1_ROWS, "plain_mean"])
    assert _publish(base, ["--part", "task1-lr", *flags, "--lrs", "0.05,0.1"]) == 0
    lr = json.loads((base / "tables" / "task1_lr.json").read_text())
    assert [r["lr"] for r in lr] == [0.05, 0.1] and "picked: lr" in page.read_text()


def test_tables_come_from_the_records_alone_and_other_lists_are_other_data(toy, tmp_path, capsys):
    """Another machine holding only the published records makes the same tables without training;
    edited lists are other data: their records do not count, and a run trained on the old lists
    is refused, never reused."""
    base, root, flags = toy
    elsewhere = [*flags, "--out", str(tmp_path / "none"), "--no-train", "--records", str(base / "records.json"),
                 "--results", str(tmp_path / "tables"), "--figs", str(tmp_path / "figs")]
    assert results.main(["--part", "task1", *elsewhere]) == 0
    assert (tmp_path / "tables" / "task1.json").read_text() == (base / "tables" / "task1.json").read_text()
    with open(root / "test.txt", "a") as f:
        f.write((root / "test.txt").read_text().splitlines()[0] + "\n")
    try:
        assert "no finished run of this part" in _refused(capsys, "--part", "task1", *elsewhere)
        with open(root / "train.txt", "a") as f:
            f.write((root / "train.txt").read_text().splitlines()[0] + "\n")
        line = _refused(capsys, "--part", "task1", *flags, "--no-train", "--records", str(tmp_path / "no.json"))
        assert "train.txt of" in line and "changed since the run trained" in line
    finally:
        make_list_root(root, classes=3, per_class=6, size=24)  # the lists as they were


def test_publishing_is_all_or_nothing(toy, monkeypatch, capsys):
    """A page that loses its markers while the tables are made (edited by hand), or a folder that
    cannot be written: the run fails with one line and every published file keeps its bytes."""
    base, _, flags = toy
    before = file_hashes(base / "tables"), file_hashes(base / "figs"), (base / "page.md").read_bytes()
    make = tables.task1_tables

    def edited_meanwhile(args, *rest):
        make(args, *rest)
        (base / "page.md").write_bytes(before[2].replace(b"<!-- task1:end -->", b""))
    monkeypatch.setattr(results, "PARTS", {**results.PARTS, "task1": (results.PARTS["task1"][0], edited_meanwhile)})
    with pytest.raises(SystemExit):
        _publish(base, ["--part", "task1", *flags, "--no-train"])
    assert "no <!-- task1:start --> ... <!-- task1:end --> markers" in capsys.readouterr().err
    assert (file_hashes(base / "tables"), file_hashes(base / "figs")) == before[:2]
    (base / "page.md").write_bytes(before[2])
    monkeypatch.undo()
    (base / "a-file").write_text("not a folder")
    with pytest.raises(SystemExit):
        _publish(base, ["--part", "task1", *flags, "--no-train"], "--figs", str(base / "a-file" / "figs"))
    assert "nothing was replaced" in capsys.readouterr().err
    assert (file_hashes(base / "tables"), (base / "page.md").read_bytes()) == (before[0], before[2])


def test_task2_sweep_distils_from_the_saturated_resnet34(toy):
    base, _, flags = toy
    assert _publish(base, ["--part", "task2-sweep", *flags, "--budgets", "1,2"]) == 0
    rows = json.loads((base / "tables" / "task2_sweep.json").read_text())
    assert [r["epochs"] for r in rows] == [1, 2] and "shallow / resnet34" in rows[0]
    kd = [r["epochs"] for r in rows if r.get("shallow_kd") is not None]
    text = (base / "page.md").read_text()
    assert kd == ([1] if "ResNet34 saturates at 1 epochs" in text else [2])
    assert "old task2-headline" not in text and (base / "figs" / "task2_sweep.png").exists()

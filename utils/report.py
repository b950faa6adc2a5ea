"""Result files: JSON rows, CSV, Markdown table and a figure, written side by side."""
import json
import os

import matplotlib
import pandas as pd

from utils.errors import UserError
from utils.files import replace_all, write_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_text(path, text):
    write_atomic(path, lambda f: f.write(text))


def _nulls(df):
    """``df`` with NaN (a run not finished) as None, which JSON writes as null and tabulate as missing."""
    return df.astype(object).where(df.notna(), None)


def markdown(df, floatfmt=".4f", text=()):
    """A Markdown table in which a missing value reads as a dash; the ``text`` columns print as
    written (a column of '+1.2' would otherwise be read as numbers and lose its signs)."""
    as_written = [list(df.columns).index(c) for c in text] if len(df) else []  # tabulate indexes the rows
    return _nulls(df).to_markdown(index=False, floatfmt=floatfmt, missingval="–", disable_numparse=as_written or False)


def plus_minus(mean, sd, spec=".3f"):
    """'mean ± sd' for a table cell: the mean alone without a spread, empty without a mean."""
    if pd.isna(mean):
        return ""
    return f"{mean:{spec}}" + ("" if pd.isna(sd) else f" ± {sd:{spec.lstrip('+')}}")


def write_results(rows, out_dir, stem="results", title=None):
    """Write ``rows`` (a list of dicts; NaN written as JSON null) as ``stem``.json/.csv/.md;
    returns the DataFrame."""
    os.makedirs(out_dir, exist_ok=True)
    df = pd.DataFrame(rows)
    write_text(os.path.join(out_dir, f"{stem}.json"), json.dumps(_nulls(df).to_dict("records"), indent=2))
    write_text(os.path.join(out_dir, f"{stem}.csv"), df.to_csv(index=False))
    write_text(os.path.join(out_dir, f"{stem}.md"), (f"{title}\n\n" if title else "") + markdown(df) + "\n")
    return df


def bar_chart(df, x, y, group, path, title, ylabel="accuracy"):
    """Grouped bars: one group per value of ``x``, one bar per value of ``group``."""
    table = df.pivot_table(index=x, columns=group, values=y, sort=False)
    ax = table.plot.bar(figsize=(max(6, 0.9 * len(table) * max(1, len(table.columns)) / 2), 4), rot=0)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    save_figure(path)


def confusion_figure(targets, preds, classes, path, title):
    """Row-normalised confusion matrix (scikit-learn's display) with every class named (long
    names cut), the figure growing with the classes so that 50 stay legible."""
    from sklearn.metrics import ConfusionMatrixDisplay
    n = len(classes)
    names = [c if len(c) <= 18 else c[:17] + "…" for c in map(str, classes)]
    side = min(max(5.0, 2.5 + 0.28 * n), 20)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    ConfusionMatrixDisplay.from_predictions(
        targets, preds, labels=list(range(n)), display_labels=names,
        normalize="true", include_values=n <= 12, values_format=".2f", cmap="Blues", ax=ax, colorbar=True)
    ax.set_title(title, fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=90, fontsize=7 if n <= 30 else 6)
    plt.setp(ax.get_yticklabels(), fontsize=7 if n <= 30 else 6)
    save_figure(path)


def heatmap(values, path, title, text=None, label="accuracy"):
    """A rows x columns DataFrame of fractions as a coloured grid (0 to 1) with each value printed,
    or ``text``'s cell (e.g. "0.731 ± 0.005") where given, at a width that fits a page."""
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(min(3.0 + 0.95 * cols, 11), 1.2 + 0.45 * rows))
    image = ax.imshow(values.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(rows):
        for j in range(cols):
            v = values.iat[i, j]
            if pd.notna(v):
                cell = f"{v:.3f}" if text is None else str(text.loc[values.index[i], values.columns[j]])
                ax.text(j, i, cell.replace(" ± ", "\n±"), ha="center", va="center", fontsize=6,
                        color="white" if v < 0.5 else "black")
    ax.set_xticks(range(cols), [str(c) for c in values.columns], fontsize=8)
    ax.set_yticks(range(rows), [str(r) for r in values.index], fontsize=8)
    fig.colorbar(image, ax=ax, label=label, fraction=0.04)
    ax.set_title(title, fontsize=8)
    save_figure(path)


def training_curves(log_csv, path, title):
    """Training loss and validation accuracy (every combination logged, and their mean) per epoch,
    from a run's log.csv."""
    log = pd.read_csv(log_csv)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(log.epoch, log.train_loss, marker="o", label="train loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend(fontsize=8)
    right.plot(log.epoch, log.train_acc, marker="o", ls="--", c="gray", label="train")
    right.plot(log.epoch, log.val_acc, marker="o", lw=2.5, c="black", label="val (selection)")
    for col in [c for c in log.columns if c.startswith("val_acc_")]:
        right.plot(log.epoch, log[col], lw=1, label=col[len("val_acc_"):])
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy")
    right.legend(fontsize=7, ncol=2)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    save_figure(path)


def save_figure(path):
    """The current figure, written whole or not at all (``write_atomic``), then closed."""
    plt.tight_layout()
    try:
        write_atomic(path, lambda f: plt.savefig(f, dpi=120, format=os.path.splitext(path)[1][1:] or "png"),
                     binary=True)
    finally:
        plt.close()


def fmt_table(df, digits=4):
    """A printable table; accuracies and the like stay fractions, as in every file written."""
    return _nulls(df).to_markdown(index=False, floatfmt=f".{digits}f", missingval="–")


def page_path(docs, page):
    """``page`` of the docs folder ``docs``, or ``docs`` itself when it is a file (one page)."""
    return docs if os.path.isfile(docs) else os.path.normpath(os.path.join(docs, page))


def _marked_page(sections, path):
    """-> the bytes of the page at ``path``, which must have each section's markers once, in order."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} to update its {', '.join(sections)} section(s) "
                        f"({getattr(exc, 'strerror', None) or exc}); --docs names the pages' folder") from None
    for section in sections:
        start, end = f"<!-- {section}:start -->".encode(), f"<!-- {section}:end -->".encode()
        if data.count(start) != 1 or data.count(end) != 1 or data.find(end) < data.find(start):
            raise UserError(f"{path} has no <!-- {section}:start --> ... <!-- {section}:end --> markers, in that "
                            "order and once")
    return data


def check_doc_sections(pages):
    """Refuse, before anything is published, a section that could not be pasted (``pages``:
    section -> page path): tables and figures are then not replaced while the pages keep the old ones."""
    for section, path in pages.items():
        _marked_page([section], path)


def pasted(path, sections):
    """The bytes of the page at ``path`` with each ``{section: text}`` between its markers; the
    rest of the page byte for byte as it was, the new lines ending as the page's do (CRLF or LF)."""
    data = _marked_page(list(sections), path)
    eol = b"\r\n" if b"\r\n" in data else b"\n"
    for section, text in sections.items():
        start, end = f"<!-- {section}:start -->".encode(), f"<!-- {section}:end -->".encode()
        head, rest = data.split(start, 1)
        _, tail = rest.split(end, 1)
        body = eol.join(text.encode().splitlines())
        data = head + start + eol + body + eol + end + tail
    return data


def update_doc(section, text, path):
    """Replace what stands between ``<!-- section:start -->`` and ``<!-- section:end -->`` in the
    page at ``path`` (``pasted``), the page's mode kept."""
    replace_all({path: pasted(path, {section: text})})

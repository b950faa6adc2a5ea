"""Result files: JSON rows, CSV, Markdown table and a figure, written side by side."""
import json
import os

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_results(rows, out_dir, stem="results", title=None):
    """Write ``rows`` (a list of dicts) as ``stem``.json/.csv/.md; returns the DataFrame."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(rows, f, indent=2)
    df = pd.DataFrame(rows)
    df.to_csv(os.path.join(out_dir, f"{stem}.csv"), index=False)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        if title:
            f.write(f"{title}\n\n")
        f.write(df.to_markdown(index=False, floatfmt=".4f") + "\n")
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


def save_figure(path):
    plt.tight_layout()
    plt.savefig(path, dpi=120)
    plt.close()


def fmt_table(df, percent=(), digits=4):
    """A printable table: fractions listed in ``percent`` shown as percentages."""
    shown = df.copy()
    for col in percent:
        if col in shown:
            shown[col] = (100 * shown[col]).map(lambda v: f"{v:.2f}")
    return shown.to_markdown(index=False, floatfmt=f".{digits}f")


def update_readme(section, text, path="README.md"):
    """Replace what stands between ``<!-- section:start -->`` and ``<!-- section:end -->``."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    with open(path) as f:
        readme = f.read()
    if start not in readme or end not in readme:
        raise ValueError(f"{path} has no {start} ... {end} markers")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{start}\n{text}\n{end}{tail}")

"""A report ``Table`` as Markdown, LaTeX (booktabs), CSV and an HTML fragment.

Cells read ``mean ± std`` where a row averages two runs or more (``std`` pandas' ddof 1), else ``mean``;
numbers are written with 4 significant digits; a missing value is ``-``. The CSV keeps the numbers whole:
``<column>`` the mean, ``<column> std`` the std, and ``runs`` the number of runs of the row.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd

from robust_cli.reporting.paper_tables import Table

PM = "±"


def number(v) -> str:
    """``v`` with 4 significant digits; ``-`` for a missing value, ``inf`` kept."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-" if v is None else str(v)
    if math.isnan(f):
        return "-"
    return f"{f:.4g}"


def cells(table: Table) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of text cells: the index columns, then ``mean ± std`` per value column."""
    values = [c for c in table.mean if c not in table.index]
    header = [*table.index, *values]
    rows = []
    for i in range(len(table.mean)):
        row = [str(table.mean.iloc[i][c]) for c in table.index]
        n = int(table.count.iloc[i])
        for c in values:
            m, s = table.mean.iloc[i][c], table.std.iloc[i][c]
            text = number(m)
            if n > 1 and text != "-" and not (isinstance(s, float) and math.isnan(s)):
                text = f"{text} {PM} {number(s)}"
            row.append(text)
        rows.append(row)
    return header, rows


def _runs_note(table: Table) -> str:
    """``runs per row: 2`` (or ``1, 2`` where rows differ); ``runs per value: 1, 2`` where a value of a row
    averages fewer runs than the row holds (a metric some of its runs lack): the note never claims a mean over
    more runs than a shown value has."""
    if table.values is not None and len(table.values.columns):
        per_value = table.values.to_numpy()
        of_row = np.broadcast_to(table.count.to_numpy()[:, None], per_value.shape)
        shown = per_value > 0  # a value no run holds is shown as "-"
        if (per_value[shown] != of_row[shown]).any():
            return f"runs per value: {', '.join(map(str, sorted(set(per_value[shown].astype(int).tolist()))))}"
    return f"runs per row: {', '.join(map(str, sorted(set(int(c) for c in table.count))))}"


def markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table under a ``### title`` line (``|`` in cells escaped)."""
    header, rows = cells(table)

    def line(items: list[str]) -> str:
        return "| " + " | ".join(i.replace("|", "\\|") for i in items) + " |"

    out = [f"### {table.title}", "", f"({_runs_note(table)}; mean {PM} std over seeds)", "", line(header),
           "|" + "|".join("---" if i < len(table.index) else "---:" for i in range(len(header))) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out) + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text.replace(PM, r"$\pm$").replace("@", r"@\,")


def latex(table: Table) -> str:
    """A booktabs ``tabular`` in a ``table`` float, the title as its caption."""
    header, rows = cells(table)
    spec = "l" * len(table.index) + "r" * (len(header) - len(table.index))
    out = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(table.title)} ({_tex(_runs_note(table))})}}",
           rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    out += [" & ".join(_tex(c) for c in r) + r" \\" for r in rows]
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def csv_frame(table: Table) -> pd.DataFrame:
    """The numbers: the index columns, ``<column>`` (mean) and ``<column> std`` per value, ``runs``."""
    values = [c for c in table.mean if c not in table.index]
    columns = {c: table.mean[c] for c in table.index}
    for c in values:
        columns[c] = table.mean[c]
        columns[f"{c} std"] = table.std[c]
    columns["runs"] = table.count.to_numpy()
    # built at once: a column inserted one by one into a wide table is pandas' PerformanceWarning
    return pd.DataFrame(columns, index=table.mean.index)


def html_table(table: Table) -> str:
    """An HTML ``<table>`` of the text cells, with its title."""
    header, rows = cells(table)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (f"<h2>{html.escape(table.title)}</h2>\n<p class=note>{html.escape(_runs_note(table))}; mean {PM} std "
            f"over seeds</p>\n<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n")


def parse_markdown(text: str) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` back from ``markdown``'s output (the inverse of ``cells`` + ``markdown``)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]

    def split(ln: str) -> list[str]:
        parts, cur, i = [], "", 1
        while i < len(ln):
            if ln[i] == "\\" and i + 1 < len(ln) and ln[i + 1] == "|":
                cur, i = cur + "|", i + 2
                continue
            if ln[i] == "|":
                parts.append(cur.strip())
                cur = ""
            else:
                cur += ln[i]
            i += 1
        return parts

    return split(lines[0]), [split(ln) for ln in lines[2:]]

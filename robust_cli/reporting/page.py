"""``index.html`` of a report: its tables and figures on one static page (no server, no script, no network:
open the file in a browser; the images are the report's own PNG files, linked relatively)."""

from __future__ import annotations

import html
from pathlib import Path

from robust_cli.reporting.paper_tables import Table
from robust_cli.reporting.render import html_table

_STYLE = """body{font-family:sans-serif;margin:2em;max-width:95em;color:#222;background:#fff}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #bbb;padding:.25em .6em}
th{background:#e8eef7}td{text-align:right}td:first-child{text-align:left}.note{color:#666;font-size:90%}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}code{background:#f3f3f3;padding:0 .2em}"""


def page(title: str, runs: list[str], tables: list[Table], images: list[Path], files: list[str]) -> str:
    """The HTML text; ``images`` and ``files`` relative to the page's folder."""
    parts = [f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class=note>{len(runs)} runs: " + ", ".join(f"<code>{html.escape(r)}</code>" for r in runs) + "</p>"]
    parts += [html_table(t) for t in tables]
    parts.append("<h2>Figures</h2>")
    parts += [f'<figure><img src="{html.escape(str(p))}" alt="{html.escape(p.stem)}">'
              f"<figcaption>{html.escape(p.stem.replace('_', ' '))}</figcaption></figure>" for p in images]
    parts.append("<h2>Files</h2><ul>" + "".join(f'<li><a href="{html.escape(f)}">{html.escape(f)}</a></li>'
                                                for f in files) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

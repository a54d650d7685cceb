"""Self-contained HTML pages for the reports: inline CSS, tables, and PNG plots embedded as
base64 data URIs (a page is one file that opens anywhere, offline)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 1.5em;
       color: #1b1b1b; max-width: 1340px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em;
     border-bottom: 1px solid #ddd; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 12.5px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
td { white-space: nowrap; }
th { background: #f0f0f0; white-space: normal; max-width: 9em; vertical-align: bottom; }
td.text, th.text { text-align: left; }
td.wrap { white-space: normal; max-width: 16em; }
tr.best td { background: #e8f5e9; font-weight: 600; }
tr.missing td { color: #999; }
.notes, .caption { font-size: 12px; color: #444; max-width: 1100px; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
.grid figure { margin: 0; flex: 0 1 auto; }
.grid figure.half { max-width: calc(50% - 10px); }
.grid figure.third { max-width: calc(33% - 10px); }
.grid figure.full { max-width: 100%; }
figure img, .plot img { max-width: 100%; border: 1px solid #eee; }
.plot img { margin: 0.5em 0; }
figcaption { font-size: 11px; color: #555; }
code { background: #f5f5f5; padding: 0 3px; }
"""


def escape(text: str) -> str:
    return html.escape(text)


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    text_columns: int = 1,
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table: the first ``text_columns`` columns left-aligned."""

    def cell(tag: str, i: int, value: str) -> str:
        cls = ' class="text"' if i < text_columns else ""
        indent = len(value) - len(value.lstrip(" "))  # an indented row (a task's category)
        return f"<{tag}{cls}>{'&nbsp;' * 2 * indent}{html.escape(value.lstrip(' '))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = []
    for r, cells in enumerate(rows):
        cls = row_classes[r] if row_classes is not None else ""
        attr = f' class="{cls}"' if cls else ""
        body.append(
            f"<tr{attr}>" + "".join(cell("td", i, c) for i, c in enumerate(cells)) + "</tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def image(path: Path, alt: str = "") -> str:
    """``path`` (a PNG) as an ``<img>`` with the file embedded."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt or path.stem)}" src="data:image/png;base64,{data}">'


def figures(paths: Sequence[Path], size: str = "half", captions: Sequence[str] = ()) -> str:
    """Plots side by side (``size``: ``full``, ``half`` or ``third`` of the page's width),
    each captioned with ``captions[i]`` or its file name."""
    items = []
    for i, path in enumerate(paths):
        caption = captions[i] if i < len(captions) else path.name
        items.append(
            f'<figure class="{size}">{image(path)}'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return f'<div class="grid">{"".join(items)}</div>'


def page(title: str, parts: Sequence[str]) -> str:
    """A whole HTML document from ``parts`` (HTML fragments)."""
    head = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>"
    )
    return "\n".join([head, *parts, "</body></html>"])

"""Small HTML building blocks of the self-contained report: escaping, tables, figures, CSS."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from markdown_it import MarkdownIt

__all__ = [
    "CSS",
    "Cell",
    "NOT_RECORDED",
    "esc",
    "fmt_number",
    "img_tag",
    "markdown_html",
    "page",
    "records_table",
    "table",
]

NOT_RECORDED = "not recorded"

CSS = """
:root { --fg:#1d2330; --muted:#5b6472; --line:#d9dee7; --bg:#ffffff; --head:#f3f5f9;
  --accent:#2a5bd7; --warn:#a35200; --bad:#b3261e; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
  Arial, sans-serif; color:var(--fg); background:var(--bg); }
header.top { background:#17213a; color:#fff; padding:18px 28px 14px; }
header.top h1 { margin:0 0 4px; font-size:22px; }
header.top p { margin:0; color:#c9d3ea; }
nav { padding:6px 28px; background:#eef1f7; border-bottom:1px solid var(--line);
  position:sticky; top:0; z-index:2; }
nav a { margin-right:18px; color:var(--accent); text-decoration:none; font-weight:600; }
main { padding:8px 28px 40px; max-width:1400px; }
section { margin-top:22px; }
h2 { font-size:19px; border-bottom:2px solid var(--line); padding-bottom:4px; }
h3 { font-size:16px; margin:18px 0 6px; }
h4 { font-size:14px; margin:14px 0 6px; }
table { border-collapse:collapse; margin:6px 0 14px; font-size:13px; }
th, td { border:1px solid var(--line); padding:4px 8px; text-align:left; vertical-align:top; }
th { background:var(--head); font-weight:600; }
td.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
td.missing { color:var(--muted); text-align:center; }
tbody tr:nth-child(even) td { background:#fafbfd; }
.scroll { overflow-x:auto; }
dl.facts { display:grid; grid-template-columns: max-content 1fr; gap:3px 16px; margin:8px 0; }
dl.facts dt { font-weight:600; color:var(--muted); }
dl.facts dd { margin:0; }
.muted { color:var(--muted); }
.ok { color:#1e7b34; font-weight:600; }
.no { color:var(--muted); }
.warn { color:var(--warn); }
.bad { color:var(--bad); font-weight:600; }
figure { display:inline-block; margin:8px 16px 16px 0; vertical-align:top; max-width:100%; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); }
figcaption { font-size:12px; color:var(--muted); margin-top:2px; }
pre.log { background:#f7f7f9; border:1px solid var(--line); padding:8px; font-size:12px;
  white-space:pre-wrap; overflow-x:auto; }
details > summary { cursor:pointer; font-weight:600; margin:8px 0; }
.md table { margin-left:0; }
.md h1 { font-size:18px; } .md h2 { font-size:16px; border:none; } .md h3 { font-size:15px; }
.md h4 { font-size:15px; } .md h5 { font-size:14px; margin:12px 0 6px; }
.md h6 { font-size:13px; margin:10px 0 4px; }
footer { color:var(--muted); font-size:12px; padding:12px 28px; border-top:1px solid var(--line); }
"""


def esc(value: Any) -> str:
    """HTML-escape ``str(value)``."""
    return html.escape(str(value), quote=True)


@dataclass
class Cell:
    """A table cell: text plus attributes (e.g. ``data-value``) and a class."""

    text: str
    attrs: dict[str, Any] = field(default_factory=dict)
    cls: str = ""
    raw: bool = False  # text is HTML already

    def render(self, tag: str = "td") -> str:
        attrs = "".join(f' {k}="{esc(v)}"' for k, v in self.attrs.items() if v is not None)
        cls = f' class="{self.cls}"' if self.cls else ""
        body = self.text if self.raw else esc(self.text)
        return f"<{tag}{cls}{attrs}>{body}</{tag}>"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    table_id: str | None = None,
    cls: str = "",
    attrs: Mapping[str, Any] | None = None,
    break_underscores: bool = False,
) -> str:
    """An HTML table; cells are strings (escaped) or :class:`Cell`; the first column is a th.
    With ``break_underscores`` a header may wrap after each ``_`` (long field names), so a
    table of many such columns fits the page."""
    extra = "".join(f' {k}="{esc(v)}"' for k, v in (attrs or {}).items())
    wbr = "_<wbr>" if break_underscores else "_"
    head = "".join(f"<th>{esc(h).replace('_', wbr)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [c if isinstance(c, Cell) else Cell("" if c is None else str(c)) for c in row]
        first, rest = cells[0], cells[1:]
        body.append("<tr>" + first.render("th") + "".join(c.render() for c in rest) + "</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    klass = f' class="{esc(cls)}"' if cls else ""
    return (
        f'<div class="scroll"><table{ident}{klass}{extra}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def fmt_number(v: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits (ints as they are); other values as text."""
    if isinstance(v, bool) or v is None:
        return NOT_RECORDED if v is None else ("yes" if v else "no")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.{digits}g}"
    return str(v)


def _flat(v: Any) -> str:
    if isinstance(v, list | tuple):
        if len(v) > 12:
            return f"{len(v)} entries"
        return ", ".join(_flat(x) for x in v) if v else "-"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_flat(x)}" for k, x in v.items()) or "-"
    return fmt_number(v) if v is not None else "-"


def records_table(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    table_id: str | None = None,
) -> str:
    """A table of dict records (columns: ``columns`` or the union of keys in first-seen order);
    a value that is a :class:`Cell` already is shown as it is (a cell with a note or a class)."""
    cols = list(columns or dict.fromkeys(k for r in records for k in r))
    rows = []
    for r in records:
        row = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, Cell):
                row.append(v)
                continue
            num = isinstance(v, int | float) and not isinstance(v, bool)
            row.append(Cell(_flat(v), cls="num" if num else ""))
        rows.append(row)
    return table(cols, rows, table_id=table_id, break_underscores=True)


def img_tag(png: bytes, alt: str, *, caption: str | None = None, href: str | None = None) -> str:
    """A ``<figure>`` with the PNG embedded as a base64 data URI; with ``href`` (the PNG's
    file, relative to the page) the image is a link to it, to open it full size."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    img = f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'
    if href:
        img = f'<a href="{esc(href)}" title="open full size">{img}</a>'
    return f"<figure>{img}{cap}</figure>"


_MD = MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown_html(text: str, *, heading_shift: int = 0) -> str:
    """Render markdown (headings, pipe tables, lists, emphasis) to HTML; raw HTML is escaped.

    ``heading_shift`` moves every heading down that many levels (capped at ``<h6>``), so a
    document's ``#`` nests under the page's section it is shown in.
    """
    tokens = _MD.parse(text)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1:]) + heading_shift)}"
    return f'<div class="md">{_MD.renderer.render(tokens, _MD.options, {})}</div>'


def page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], body: str, foot: str) -> str:
    """A complete HTML document with inline CSS and no external resources."""
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header class="top"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>'
        f"<nav>{links}</nav><main>{body}</main><footer>{esc(foot)}</footer></body></html>\n"
    )

"""report.html: the report document as one self-contained, printable HTML file.

Figures are embedded as base64 PNG data, the style sheet is inline, and there is no
script and no external reference, so the file reads the same offline, mailed, or
printed. The best architectures get a card each: score, size, status history, the
line of descent back to the zoo as a chain of boxes, and the delta against the parent
as a coloured diff.
"""
from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path

from analysis import claims as cl
from analysis.document import (
    Architectures, Block, ClaimBlock, Document, Figure, Section, Text, architecture_table, history_groups, history_text,
    markdown,
)
from analysis.lineage import Architecture, Step
from analysis.tables import Table, fmt

#: Diff lines shown per architecture; the rest are counted (the store has them all).
MAX_DIFF_LINES = 120

STYLE = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1120px; padding: 24px; }
h1 { margin: 0 0 4px; font-size: 26px; } h2 { margin-top: 36px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { margin: 22px 0 8px; font-size: 17px; }
.meta { color: var(--muted); margin: 0; }
nav { margin: 14px 0 0; font-size: 14px; } nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13.5px; }
th, td { border: 1px solid var(--line); padding: 4px 9px; vertical-align: top; }
th { background: var(--soft); text-align: left; } td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fbfcfd; }
.verdict { display: inline-block; padding: 1px 9px; border-radius: 11px; font-size: 12.5px; font-weight: 600; white-space: nowrap; }
.v-supported { background: #dafbe1; color: #116329; } .v-not-supported { background: #ffebe9; color: #a40e26; }
.v-not-enough-data { background: #eaeef2; color: #424a53; }
.claim { margin: 6px 0 18px; } .claim ul { margin: 4px 0; padding-left: 22px; color: var(--fg); }
.figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin: 14px 0; break-inside: avoid; }
.card h3 { margin: 0 0 6px; } .card .facts { color: var(--muted); font-size: 13.5px; margin-bottom: 8px; }
.card .facts b { color: var(--fg); }
.chain { display: flex; flex-wrap: wrap; align-items: center; gap: 4px; margin: 6px 0 10px; }
.node { border: 1px solid #8c959f; border-radius: 6px; padding: 2px 8px; font-size: 13px; background: #fff; }
.node.zoo { border-style: dashed; background: var(--soft); } .node.self { border: 2px solid #0969da; font-weight: 600; }
.node small { color: var(--muted); } .arrow { color: var(--muted); }
.chips { margin: 4px 0 8px; } .chip { display: inline-block; font-size: 12px; border-radius: 10px; padding: 0 7px;
        margin: 0 4px 3px 0; background: #eaeef2; } .chip.ok { background: #dafbe1; } .chip.elite { outline: 2px solid #1a7f37; }
.chip.fail { background: #ffebe9; }
pre.diff { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #fff; border: 1px solid var(--line);
           border-radius: 6px; padding: 6px 0; overflow-x: auto; margin: 4px 0; }
pre.diff span { display: block; padding: 0 10px; white-space: pre; }
.add { background: #e6ffec; color: #116329; } .del { background: #ffebe9; color: #82071e; }
.hunk { background: #ddf4ff; color: #0550ae; } .file { color: var(--muted); font-weight: 600; }
.note { color: var(--muted); font-size: 13px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; } nav { display: none; }
  h2 { break-after: avoid; } table, .figure, .claim { break-inside: avoid; }
  pre.diff span { white-space: pre-wrap; } a { color: inherit; text-decoration: none; }
}
"""


def verdict_badge(verdict: str) -> str:
    return f'<span class="verdict v-{verdict.replace(" ", "-")}">{escape(verdict)}</span>'


def table_html(table: Table, badges: bool = False) -> str:
    """A :class:`Table` as HTML; with ``badges`` a cell that is a verdict becomes a coloured badge."""
    head = "".join(f'<th class="{a}">{escape(h)}</th>' for h, a in zip(table.header, table.align))

    def cell(value: str, align: str) -> str:
        text = verdict_badge(value) if badges and value in (cl.SUPPORTED, cl.NOT_SUPPORTED, cl.NOT_ENOUGH) else escape(value)
        return f'<td class="{align}">{text}</td>'

    body = "".join("<tr>" + "".join(cell(str(v), a) for v, a in zip(row, table.align)) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(figure: Figure) -> str:
    data = base64.b64encode(Path(figure.path).read_bytes()).decode("ascii")
    return f'<div class="figure"><img alt="{escape(figure.alt)}" src="data:image/png;base64,{data}"></div>'


def claim_html(block: ClaimBlock) -> str:
    c = block.claim
    parts = [f'<div class="claim"><h3>{escape(c.title)}</h3>']
    if block.figure:
        parts.append(figure_html(block.figure))
    if c.details:
        parts.append("<ul>" + "".join(f"<li>{escape(d)}</li>" for d in c.details) + "</ul>")
    parts.append(f"<p>Verdict: {verdict_badge(c.verdict)} {escape(c.summary)}</p></div>")
    return "".join(parts)


def diff_html(lines: list[str]) -> str:
    """A unified diff with added, removed, hunk-header and file lines coloured."""
    if not lines:
        return '<p class="note">no delta recorded</p>'
    shown = lines[:MAX_DIFF_LINES]
    out = []
    for line in shown:
        kind = ("file" if line.startswith(("+++", "---")) else "add" if line.startswith("+")
                else "del" if line.startswith("-") else "hunk" if line.startswith("@@") else "ctx")
        out.append(f'<span class="{kind}">{escape(line) or " "}</span>')
    more = len(lines) - len(shown)
    tail = f'<p class="note">... {more} more diff lines (the store holds the whole delta)</p>' if more > 0 else ""
    return f'<pre class="diff">{"".join(out)}</pre>{tail}'


def chain_html(steps: list[Step]) -> str:
    """The line of descent as boxes joined by arrows, zoo baseline first, this architecture last."""
    nodes = []
    for i, s in enumerate(steps):
        cls = "node zoo" if s.is_zoo else "node self" if i == len(steps) - 1 else "node"
        label = "zoo baseline" if s.is_zoo and not math.isfinite(s.score) else fmt(s.score)
        nodes.append(f'<span class="{cls}">{escape(s.name)} <small>{escape(label)}</small></span>')
    return '<div class="chain">' + '<span class="arrow">&rarr;</span>'.join(nodes) + "</div>"


def chips_html(arch: Architecture) -> str:
    chips = []
    for cycle, status, elite, count, message in history_groups(arch):
        cls = "chip ok" if status == "ok" else "chip" if status == "duplicate" else "chip fail"
        cls += " elite" if elite else ""
        title = f' title="{escape(message)}"' if message else ""
        chips.append(f'<span class="{cls}"{title}>cycle {cycle}: {escape(status)}{" (elite)" if elite else ""}'
                     f'{f" x{count}" if count > 1 else ""}</span>')
    return '<div class="chips">' + "".join(chips) + "</div>"


def architecture_html(rank: int, arch: Architecture) -> str:
    size = lambda v: fmt(v) if v >= 0 else "n/a"  # noqa: E731
    facts = (f"score <b>{fmt(arch.score)}</b> &middot; parameters <b>{size(arch.params)}</b> &middot; "
             f"FLOPs <b>{size(arch.flops)}</b> &middot; parent <b>{escape(arch.parent)}</b> &middot; run "
             f"{escape(arch.run)}")
    return (f'<div class="card"><h3>{rank}. {escape(arch.name)}</h3><div class="facts">{facts}</div>'
            f'<div class="note">line of descent</div>{chain_html(arch.lineage)}'
            f'<div class="note" title="{escape(history_text(arch))}">status history (every proposal of this '
            f"architecture)</div>{chips_html(arch)}"
            f'<div class="note">delta against the parent</div>{diff_html(arch.diff)}</div>')


def block_html(block: Block) -> str:
    if isinstance(block, Text):
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, Table):
        return table_html(block, badges=True)
    if isinstance(block, Figure):
        return figure_html(block)
    if isinstance(block, ClaimBlock):
        return claim_html(block)
    if isinstance(block, Architectures):
        if not block.items:
            return f"<p>{escape(block.empty)}</p>"
        return table_html(architecture_table(block.items)) + "".join(
            architecture_html(rank, a) for rank, a in enumerate(block.items, 1))
    raise TypeError(f"not a report block: {block!r}")


def section_html(section: Section) -> str:
    anchor = f' id="{escape(section.key)}"' if section.key else ""
    head = f"<h2{anchor}>{escape(section.heading)}</h2>" if section.heading else ""
    return f"<section>{head}{''.join(block_html(b) for b in section.blocks)}</section>"


def render(doc: Document) -> str:
    """The whole document as one HTML page."""
    nav = "".join(f'<a href="#{escape(s.key)}">{escape(s.heading)}</a>' for s in doc.sections if s.key and s.heading)
    meta = "".join(f'<p class="meta">{escape(m)}</p>' for m in doc.meta)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(doc.title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f"<body><header><h1>{escape(doc.title)}</h1>{meta}<nav>{nav}</nav></header>"
            f"{''.join(section_html(s) for s in doc.sections)}</body></html>\n")


def write_html(doc: Document, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render(doc), encoding="utf-8")
    return path


def write_document(doc: Document, out_dir: Path, stem: str) -> Path:
    """``out_dir/stem.md`` (figures linked) and the self-contained ``stem.html`` beside it;
    returns the Markdown path."""
    write_html(doc, out_dir / f"{stem}.html")
    path = out_dir / f"{stem}.md"
    path.write_text(markdown(doc, out_dir))
    return path

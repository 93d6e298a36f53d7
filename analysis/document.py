"""The report as a document: sections of blocks, rendered to markdown here and to HTML by
:mod:`analysis.html`, so report.md and report.html always say the same thing.

A block is a :class:`Text` paragraph, a :class:`~analysis.tables.Table`, a
:class:`Figure` (a PNG file), a :class:`ClaimBlock` (a claim's details and verdict,
with its figure) or an :class:`Architectures` list (the best architectures found).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from analysis import claims as cl
from analysis.lineage import Architecture, Step
from analysis.tables import Table, fmt, to_markdown


@dataclass
class Text:
    text: str


@dataclass
class Figure:
    path: Path
    alt: str


@dataclass
class ClaimBlock:
    claim: cl.Claim
    figure: Figure | None = None


@dataclass
class Architectures:
    items: list[Architecture]
    empty: str = "No candidate was scored."


Block = Union[Text, Table, Figure, ClaimBlock, Architectures]


@dataclass
class Section:
    heading: str
    blocks: list[Block] = field(default_factory=list)
    key: str = ""  # anchor id in the HTML


@dataclass
class Document:
    title: str
    meta: list[str]  # lines under the title: sources, sizes
    sections: list[Section]


def chain_text(steps: list[Step]) -> str:
    """A line of descent as text, zoo baseline first.

    >>> chain_text([Step("mlp", math.nan, True), Step("c0000_002", 0.4, False)])
    'mlp (zoo) -> c0000_002 (0.400)'
    """
    return " -> ".join(f"{s.name} ({'zoo' if s.is_zoo and not math.isfinite(s.score) else fmt(s.score)})"
                       for s in steps)


def history_groups(arch: Architecture) -> list[tuple[int, str, bool, int, str]]:
    """The proposals of an architecture as (cycle, status, elite, count, first message), in order:
    an architecture the search keeps proposing is listed once per cycle and outcome."""
    groups: dict[tuple[int, str, bool], list] = {}
    for row in arch.history:
        groups.setdefault((row.cycle, row.status, row.is_elite), []).append(row.message)
    return [(c, s, e, len(m), m[0]) for (c, s, e), m in groups.items()]


def history_text(arch: Architecture) -> str:
    """Cycle and status of every proposal of the architecture, e.g. 'c1 ok*, c2 ok* x3, c2 duplicate'.

    >>> from analysis.lineage import Row
    >>> rows = [Row("c0001_000", 1, "ok", 0.5, "mlp", "x", "", 1, 1, True, "", "")] * 3
    >>> history_text(Architecture("r", "c0001_000", 0.5, 1, 1, "mlp", "", "x", rows))
    'c1 ok* x3'
    """
    return ", ".join(f"c{c} {s}{'*' if e else ''}{f' x{n}' if n > 1 else ''}" for c, s, e, n, _ in history_groups(arch))


def architecture_table(items: list[Architecture]) -> Table:
    """The compact form (report.md): one row per architecture; * marks an elite."""
    rows = [[str(rank), a.run, a.name, fmt(a.score), fmt(a.params) if a.params >= 0 else "n/a",
             fmt(a.flops) if a.flops >= 0 else "n/a", history_text(a), chain_text(a.lineage)]
            for rank, a in enumerate(items, 1)]
    return Table(["#", "run", "architecture", "score", "params", "FLOPs", "status history (* elite)", "lineage"],
                 rows, ["r", "l", "l", "r", "r", "r", "l", "l"])


def markdown_block(block: Block, out_dir: Path) -> list[str]:
    if isinstance(block, Text):
        return [block.text, ""]
    if isinstance(block, Table):
        return to_markdown(block)
    if isinstance(block, Figure):
        return [f"![{block.alt}]({_relative(block.path, out_dir)})", ""]
    if isinstance(block, ClaimBlock):
        c = block.claim
        lines = [f"### {c.title}", ""]
        if block.figure:
            lines += markdown_block(block.figure, out_dir)
        lines += [f"- {d}" for d in c.details] + ([""] if c.details else [])
        return lines + [c.verdict_line(), ""]
    if isinstance(block, Architectures):
        return to_markdown(architecture_table(block.items)) if block.items else [block.empty, ""]
    raise TypeError(f"not a report block: {block!r}")


def _relative(path: Path, out_dir: Path) -> str:
    try:
        return str(Path(path).relative_to(out_dir))
    except ValueError:
        return str(path)


def markdown(doc: Document, out_dir: Path) -> str:
    """The document as markdown; figures are linked relative to ``out_dir``."""
    lines = [f"# {doc.title}", "", *[f"{m}  " for m in doc.meta[:-1]], *doc.meta[-1:], ""]
    for section in doc.sections:
        if section.heading:
            lines += [f"## {section.heading}", ""]
        for block in section.blocks:
            lines += markdown_block(block, out_dir)
    return "\n".join(lines).rstrip() + "\n"

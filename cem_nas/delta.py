"""Unified diffs (deltas): make, extract, parse and apply with verified fallback tiers.

LLMs write diffs with wrong ``@@`` numbers, wrong counts, drifted whitespace, fences
and chatter around them. The applier, not the format, carries reliability (Aider's
unified-diff study), so :func:`apply_delta` tries tiers in order and records which one
made the delta apply. Every tier verifies: a hunk is applied only where its old side
(context and removed lines) is found, all of it up to the content tier, its removed lines
and all but a few context lines after it, and a match found at several equally good
places is refused.

``strict``
    unidiff parses the diff as written (headers, counts) and every hunk's old side
    matches the source exactly at the header's line number.
``recount``
    counts and positions are recomputed from the hunk body (a lenient parser that also
    takes ``@@ @@`` without numbers, missing ``---/+++`` headers, and context lines that
    lost their leading space: blank ones, and unprefixed ones directly followed by a
    ``+``/``-`` line); the old side must match exactly, at the header's line or at one
    single place in the file. A line of text that cuts a hunk short, followed by
    code-like ``+``/``-`` lines, is a ``parse_error`` (never a silently shortened hunk);
    markdown bullets (``- word``) after a diff are chatter.
``content``
    the old side is located by content alone, tolerating trailing whitespace, CRLF,
    a missing final newline and a uniform indentation offset (the added lines are then
    re-indented by the same offset; indentation is measured in characters).
``gapped``
    for a hunk the content tier finds nowhere (never one it finds at several places):
    its old side matched line by line, up to trailing whitespace, with one run of at
    most :data:`MAX_GAP` source lines skipped between two of its lines; the whole
    region is rewritten as the hunk says. A small model often leaves out a line of
    context, and either writes it back among its added lines (old side ``BatchNorm2d,
    MaxPool2d``, new side ``BatchNorm2d, ReLU, GELU, MaxPool2d`` where the file reads
    ``BatchNorm2d, ReLU, MaxPool2d``: its new side is the text it wants there, and the
    skipped lines are replaced) or forgets it (no added line repeats a skipped one: the
    skipped lines stay where they were). The smallest gap wins; ties as below.
``fuzz``
    for a hunk the gapped tier finds nowhere: the content tier's search with up to
    :data:`MAX_FUZZ` context lines ignored at the hunk's start, its end, then both (as
    GNU patch's fuzz factor): a model often misremembers the first or last line of its
    context. What is left must still hold a change and a non-blank old line; the ignored
    lines stay in the file as they are; a trimmed hunk found at several places refuses
    the hunk.
``partial``
    only with ``partial=True``: the hunks that verify at the fuzz tier are applied,
    the others are reported in :attr:`Applied.hunks`.

Ties: among candidate places of equal match quality (exact < whitespace-only <
indentation offset), the one at the hunk header's old-side line wins if the header
has numbers; otherwise several places mean the hunk is refused as ambiguous. The
header number is only ever a tie-breaker, never a reason to apply.

Truncation (a generation cut by its token limit) is decided once, by whoever still has
the evidence, and travels with the delta as ``complete``:

``complete=True``
    the text is known to be whole (its fenced block closed, generation stopped on EOS,
    or the delta was made by :func:`make_delta`): no truncation rule runs;
``complete=False``
    generation stopped at its token limit: a last hunk that runs to the end of the text
    (it was being written when the limit hit) is dropped, and the delta is the hunks
    written in full before it; with none, it is refused as ``parse_error``. (A small
    model asked for one change often writes one good hunk and then more until the limit.)
``complete=None`` (unknown provenance)
    a heuristic decides: refused when the text ends right after a hunk header, or the
    last hunk runs to the end of the text and is shorter than its header's counts: on
    either side if the text stops mid-line; on both sides if it stops inside an unclosed
    code fence or the hunk lacks its trailing context (none, or fewer lines than it has
    leading context). Pass the raw response (not ``.strip()``-ed), so that a missing
    final newline and the fences still mean something.

The heuristic misfires on an extracted hunk (the closing fence, the proof of
completeness, is gone), so a sampler extracts with the stop reason it knows and hands
the extracted delta on with ``complete=True``. A diff whose hunks hold no ``+``/``-``
line is read (and verified) like any other; that it changes nothing is for the caller
to see in the result. A hunk whose removed lines equal its added lines (a line rewritten
as itself, as a small model often does around its real edit) asks for nothing: when
another hunk of the diff changes something it is dropped, so its context, often
misremembered, cannot refuse the real edit.

:func:`cut_after_hunks` ends a response after its first changing hunks, or a few unchanged
lines after their last change: a sampler that asks for one change stops the model there
instead of letting it write more hunks, or the rest of the file as context, until its limit.

Whatever the input, :func:`apply_delta` returns an :class:`Applied` or raises
:class:`DeltaError`; nothing else.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import unidiff

#: Largest delta (or LLM response) accepted, in characters. An LLM answer of 1,024
#: new tokens is ~4k characters; a full-mode file of 200+ lines ~10k.
MAX_DELTA_CHARS = 64_000
#: Largest source or result accepted, in characters.
MAX_RESULT_CHARS = 256_000
#: Tier names, in the order they are tried.
TIERS = ("strict", "recount", "content", "gapped", "fuzz", "partial")
#: Most source lines the ``gapped`` tier lets a hunk's old side skip: one short block.
MAX_GAP = 8
#: Most context lines the ``fuzz`` tier ignores at each end of a hunk (GNU patch's default fuzz factor).
MAX_FUZZ = 2
#: Values of :attr:`DeltaError.kind`.
ERROR_KINDS = ("parse_error", "apply_error")


class DeltaError(Exception):
    """A delta that could not be read (``parse_error``) or applied (``apply_error``)."""

    def __init__(self, kind: str, message: str):
        if kind not in ERROR_KINDS:
            raise ValueError(f"DeltaError kind must be one of {ERROR_KINDS}, got {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True)
class HunkResult:
    """What happened to one hunk.

    ``index`` is the hunk's position in the delta (0-based, as written); ``start`` the
    1-based source line where its old side was applied (for a pure insertion: the line
    it was inserted before); ``header_start`` the same number as the header claimed;
    ``offset = start - header_start``; ``indent`` the indentation shift (characters)
    applied to its added lines; ``message`` why it was not applied.
    """

    index: int
    header: str
    tier: str | None
    applied: bool
    start: int | None
    header_start: int | None
    offset: int | None
    indent: int
    message: str = ""


@dataclass(frozen=True)
class Applied:
    """A delta applied: the new ``code``, the ``tier`` that made it apply, per-hunk details."""

    code: str
    tier: str
    hunks: tuple[HunkResult, ...]


# ---------------------------------------------------------------------------- counting

_TOKEN_RE = re.compile(
    r"[A-Za-z_]\w*"                      # identifiers and keywords
    r"|\d[\w.]*"                         # numbers (incl. 1e-3, 0x1f, 3.5)
    r"|\*\*=?|//=?|>>=?|<<=?|->|:="      # multi-character operators
    r"|[-+*/%&|^@<>=!]="                 # augmented assignment and comparisons
    r"|\S"                               # any other single character
)


def code_tokens(text: str) -> list[str]:
    """Tokens of code by a simple regex: identifiers, numbers, operators, other characters.

    A language-agnostic stand-in for a subword tokenizer, so lengths compare across LLMs.
    String literals are split into their words; whitespace is not a token.

    >>> code_tokens("x = nn.Conv2d(3, 16, kernel_size=3)")
    ['x', '=', 'nn', '.', 'Conv2d', '(', '3', ',', '16', ',', 'kernel_size', '=', '3', ')']
    """
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """Number of :func:`code_tokens` in ``text``.

    >>> count_tokens("return self.fc(x) ** 2")
    9
    """
    return len(code_tokens(text))


def count_lines(text: str) -> int:
    """Number of lines; a last line without a final newline counts.

    >>> count_lines(""), count_lines("a"), count_lines("a\\nb\\n"), count_lines("a\\n\\n")
    (0, 1, 2, 2)
    """
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


# ---------------------------------------------------------------------------- lines
# A line is (text, eol): text without its "\n" (a "\r" stays part of the text), eol False
# only for a last line lacking its final newline. Splitting on "\n" alone (not
# str.splitlines) keeps form feeds and other separators inside lines, as diff tools do.

Line = tuple[str, bool]


def _split(text: str) -> list[Line]:
    if not text:
        return []
    parts = text.split("\n")
    if parts[-1] == "":
        return [(p, True) for p in parts[:-1]]
    return [(p, True) for p in parts[:-1]] + [(parts[-1], False)]


def _join(lines: list[Line]) -> str:
    return "".join(t + "\n" if eol else t for t, eol in lines)


def make_delta(before: str, after: str, context: int = 3) -> str:
    """Unified diff from ``before`` to ``after`` with ``a/net.py``/``b/net.py`` headers.

    Empty when the texts are equal. A last line without a final newline gets the
    standard ``\\ No newline at end of file`` marker.

    >>> print(make_delta("a\\nb\\nc\\n", "a\\nB\\nc\\n", context=1), end="")
    --- a/net.py
    +++ b/net.py
    @@ -1,3 +1,3 @@
     a
    -b
    +B
     c
    """
    lines = difflib.unified_diff(
        [t + "\n" if eol else t for t, eol in _split(before)],
        [t + "\n" if eol else t for t, eol in _split(after)],
        fromfile="a/net.py",
        tofile="b/net.py",
        n=context,
    )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


# ---------------------------------------------------------------------------- parsing

_HUNK_RE = re.compile(r"^@@+\s*(?:-(\d+)(?:,(\d+))?)?\s*(?:\+(\d+)(?:,(\d+))?)?\s*@@+")
_FENCE_RE = re.compile(r"^\s{0,3}(```|~~~)\s*([\w+-]*)")
# A code-like +/- line (not a markdown bullet "- word"): after a hunk was cut short by a
# line of text, such a line means the text was a hunk line that lost its prefix.
_ORPHAN_RE = re.compile(r"^[+-](?:[^\s+-]| {2,}\S)")
_GIT_META_RE = re.compile(r"^(?:diff --git |index [0-9a-f]+\.\.[0-9a-f]+|(?:new|deleted) file mode )")


@dataclass
class _Hunk:
    index: int
    header: str
    old_start: int | None
    old_count: int | None
    new_start: int | None
    new_count: int | None
    body: list[tuple[str, str, bool]]  # (tag in " +-", text, eol)
    bare: list[bool]                   # the raw line was empty (a blank context line without its space)
    start: int = 0                     # where its lines begin among the parse's consumed lines

    @property
    def old(self) -> list[Line]:
        return [(t, eol) for tag, t, eol in self.body if tag != "+"]

    @property
    def new(self) -> list[Line]:
        return [(t, eol) for tag, t, eol in self.body if tag != "-"]

    @property
    def has_marker(self) -> bool:
        return any(not eol for _, _, eol in self.body)

    def header_position(self) -> int | None:
        """0-based index in the source that the header points at (insertion point if no old lines)."""
        if self.old_start is None:
            return None
        return self.old_start if self.old_count == 0 else self.old_start - 1


@dataclass
class _Parsed:
    hunks: list[_Hunk]
    lines: list[str]      # the raw diff lines that were recognised, chatter removed


def _fenced_blocks(raw: list[str]) -> list[tuple[str, list[str], bool]]:
    """Code fences as (language, lines, closed); an unclosed fence runs to the end."""
    blocks, i = [], 0
    while i < len(raw):
        m = _FENCE_RE.match(raw[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(raw) and not _FENCE_RE.match(raw[j]):
            j += 1
        blocks.append((m.group(2).lower(), raw[i + 1 : j], j < len(raw)))
        i = j + 1
    return blocks


def _close_hunk(hunk: _Hunk, hunks: list[_Hunk], consumed: list[str]) -> None:
    """Drop trailing bare blank lines the header's counts do not ask for (chatter spacing),
    then the hunk itself (and its header line) if nothing is left in it."""
    while hunk.body and hunk.bare[-1]:
        n_old = sum(tag != "+" for tag, _, _ in hunk.body)
        n_new = sum(tag != "-" for tag, _, _ in hunk.body)
        if hunk.old_count is not None and hunk.new_count is not None and n_old <= hunk.old_count and n_new <= hunk.new_count:
            break
        hunk.body.pop()
        hunk.bare.pop()
        consumed.pop()
    if not hunk.body:
        hunks.pop()
        if hunk.header:
            consumed.pop()


def _parse_lines(raw: list[str]) -> tuple[list[_Hunk], list[str], _Hunk | None]:
    """Lenient unified-diff reader: hunks, the raw lines they came from, the hunk still open at the end."""
    hunks: list[_Hunk] = []
    consumed: list[str] = []
    current: _Hunk | None = None
    after_file_header = False
    ended_by_text: int | None = None  # the line of text that cut the last hunk short
    for i, line in enumerate(raw):
        if line.startswith(("@@", "--- ")):
            ended_by_text = None
        if line.startswith("@@"):
            if current is not None:
                _close_hunk(current, hunks, consumed)
            m = _HUNK_RE.match(line)
            nums = [int(g) if g is not None else None for g in m.groups()] if m else [None] * 4
            old_start, old_count, new_start, new_count = nums
            if old_start is not None and old_count is None:
                old_count = 1  # "@@ -5 +5 @@" means one line
            if new_start is not None and new_count is None:
                new_count = 1
            current = _Hunk(len(hunks), line.rstrip("\r"), old_start, old_count, new_start, new_count, [], [],
                            len(consumed))
            hunks.append(current)
            consumed.append(line)
            after_file_header = False
            continue
        if line.startswith("--- ") and i + 1 < len(raw) and raw[i + 1].startswith("+++ "):
            if current is not None:
                _close_hunk(current, hunks, consumed)
            current = None
            consumed.append(line)
            after_file_header = True
            continue
        if line.startswith("+++ ") and after_file_header and consumed and consumed[-1].startswith("--- "):
            consumed.append(line)
            continue
        if current is None and after_file_header and line[:1] in (" ", "+", "-"):
            # hunk body right after the file headers, the @@ line forgotten
            current = _Hunk(len(hunks), "", None, None, None, None, [], [], len(consumed))
            hunks.append(current)
        if current is None:
            if ended_by_text is not None and _ORPHAN_RE.match(line):
                raise DeltaError(
                    "parse_error",
                    f"line {i + 1} {line.strip()[:60]!r} looks like a diff line outside any hunk: the hunk before it "
                    f"was cut by line {ended_by_text + 1} {raw[ended_by_text].strip()[:60]!r}, which lacks the "
                    "leading ' ', '+' or '-' of a hunk line",
                )
            if _GIT_META_RE.match(line):
                consumed.append(line)
            continue  # chatter between or around hunks
        if line in ("", "\r"):
            current.body.append((" ", line, True))
            current.bare.append(True)
        elif line[0] in " +-":
            current.body.append((line[0], line[1:], True))
            current.bare.append(False)
        elif line[0] == "\\" and current.body:
            tag, text, _ = current.body[-1]
            current.body[-1] = (tag, text, False)
        elif current.bare[-1:] != [True] and i + 1 < len(raw) and raw[i + 1][:1] in (" ", "+", "-") \
                and not raw[i + 1].startswith(("--- ", "+++ ")):
            # a context line that lost its leading space (a top-level line before more body lines)
            current.body.append((" ", line, True))
            current.bare.append(False)
        else:
            _close_hunk(current, hunks, consumed)
            current = None
            ended_by_text = i
            continue
        consumed.append(line)
    if current is not None:
        _close_hunk(current, hunks, consumed)
    return hunks, consumed, current


def _truncation(hunk: _Hunk, midline: bool, fence_open: bool) -> str:
    """Why the hunk still open at the end of the text looks cut off by a token limit ("" if it does not)."""
    if not hunk.body:
        return f"the text ends right after the hunk header {hunk.header!r}: the output looks truncated"
    if hunk.old_count is None or hunk.new_count is None:
        return ""
    n_old, n_new = len(hunk.old), len(hunk.new)
    short_old, short_new = n_old < hunk.old_count, n_new < hunk.new_count
    tags = "".join(tag for tag, _, _ in hunk.body)
    leading, trailing = len(tags) - len(tags.lstrip(" ")), len(tags) - len(tags.rstrip(" "))
    if midline and (short_old or short_new):
        why = "the text stops mid-line"
    elif short_old and short_new and fence_open:
        why = "the text ends inside an unclosed code fence"
    elif short_old and short_new and (trailing == 0 or trailing < leading):
        why = f"it has {trailing} trailing context line(s) for {leading} leading"
    else:
        return ""
    return (f"the last hunk ({hunk.header}) has {n_old}/{hunk.old_count} old and {n_new}/{hunk.new_count} "
            f"new lines and {why}: the output looks truncated")


def _preview(text: str, n: int = 60) -> str:
    return repr(text[:n] + ("..." if len(text) > n else ""))


def _check_text(value: object, what: str, cap: int, kind: str) -> str:
    if not isinstance(value, str):
        raise DeltaError(kind, f"{what} must be str, got {type(value).__name__}")
    if len(value) > cap:
        raise DeltaError(kind, f"{what} has {len(value):,} characters, over the cap of {cap:,}")
    return value


def _parse(text: object, complete: bool | None = None) -> _Parsed:
    text = _check_text(text, "delta", MAX_DELTA_CHARS, "parse_error")
    raw = text.split("\n")
    if raw[-1] == "":
        raw.pop()  # what follows the final newline is not a line
    # the first fenced block that holds a diff, else the whole text (fences then count as chatter)
    candidates = [(lines, closed) for _, lines, closed in _fenced_blocks(raw)] + [(raw, True)]
    for lines, closed in candidates:
        hunks, consumed, open_hunk = _parse_lines(lines)
        if hunks or open_hunk is not None:
            break
    else:
        raise DeltaError(
            "parse_error",
            "no unified diff found: expected a hunk header like '@@ -12,4 +12,5 @@' (or '--- a/net.py' / "
            f"'+++ b/net.py' headers) followed by lines starting with ' ', '+' or '-'; the text starts {_preview(text)}",
        )
    # an unclosed fence runs to the end of the text, as does the whole text
    if open_hunk is not None and (lines is raw or not closed) and complete is not True:
        if complete is False:
            whole = [h for h in hunks if h is not open_hunk]
            if whole:
                # the hunks written in full before the limit are the proposal; the cut one is dropped
                start = min(open_hunk.start, len(consumed))
                while start and consumed[start - 1].startswith(("--- ", "+++ ")):
                    start -= 1
                return _Parsed(whole, consumed[:start])
            raise DeltaError("parse_error", f"generation stopped at its token limit while writing its only hunk "
                                            f"({open_hunk.header or 'no @@ header'}): the output is truncated")
        truncated = _truncation(open_hunk, not text.endswith("\n"), not closed)
        if truncated:
            raise DeltaError("parse_error", truncated)
    return _without_noop_hunks(_Parsed(hunks, consumed))


def _changes(removed: list, added: list) -> bool:
    return removed != added


def _hunk_changes(hunk: _Hunk) -> bool:
    # old and new sides, not removed and added lines: a hunk may move a line (a blank one
    # above a def to below it); a line's newline counts (adding the final newline is a change)
    return _changes(hunk.old, hunk.new)


def _without_noop_hunks(parsed: _Parsed) -> _Parsed:
    """``parsed`` less its hunks that change nothing, when another one does (module docstring)."""
    kept = [h for h in parsed.hunks if _hunk_changes(h)]
    if not kept or len(kept) == len(parsed.hunks):
        return parsed
    lines, ends = parsed.lines, [h.start for h in parsed.hunks[1:]] + [len(parsed.lines)]
    drop = set()
    for hunk, end in zip(parsed.hunks, ends):
        if hunk not in kept:
            while end > hunk.start and lines[end - 1].startswith(("--- ", "+++ ")):
                end -= 1  # the next hunk's file headers stay with it
            drop.update(range(hunk.start, end))
    return _Parsed(kept, [line for i, line in enumerate(lines) if i not in drop])


def cut_after_hunks(text: str, n: int, trailing: int = 0) -> str | None:
    """``text`` up to the hunk header that follows its ``n``-th changing hunk or, with
    ``trailing``, up to the ``trailing``-th whole unchanged line after the last change of
    that hunk; None if it has neither (a changing hunk: its removed lines differ from its
    added lines).

    >>> answer = "```diff\\n@@ -1 +1 @@\\n-a\\n+a\\n@@ -3 +3 @@\\n-b\\n+c\\n x\\n y\\n@@ -9 +9 @@\\n-d\\n"
    >>> print(cut_after_hunks(answer, 1), end="")
    ```diff
    @@ -1 +1 @@
    -a
    +a
    @@ -3 +3 @@
    -b
    +c
     x
     y
    >>> print(cut_after_hunks(answer, 1, trailing=1), end="")
    ```diff
    @@ -1 +1 @@
    -a
    +a
    @@ -3 +3 @@
    -b
    +c
     x
    >>> cut_after_hunks(answer, 2) is None
    True
    """
    changing, removed, added, offset, quiet = 0, None, [], 0, 0
    for line in text.splitlines(keepends=True):
        if line.startswith("@@"):
            if removed is not None and _changes(removed, added):
                changing += 1
            if changing >= n:
                return text[:offset]
            removed, added, quiet = [], [], 0
        elif removed is not None and line[:1] in ("-", "+"):
            (removed if line[0] == "-" else added).append(line[1:].rstrip("\r\n"))
            quiet = 0
        elif removed is not None and line[:1] in (" ", "\n", "\r") and line.endswith("\n"):
            quiet += 1
            if trailing and quiet >= trailing and changing + _changes(removed, added) >= n:
                return text[: offset + len(line)]
        offset += len(line)
    return None


def extract_delta(text: str, complete: bool | None = None) -> str:
    """The unified diff inside an LLM response: fences, chatter and stray text removed.

    ``complete`` is what the caller knows about truncation (module docstring): pass the
    raw response with it; the result is whole and is applied with ``complete=True``.
    Raises :class:`DeltaError` (``parse_error``) if there is no diff or it is truncated.

    >>> print(extract_delta("Sure! Here it is:\\n```diff\\n@@ -1 +1 @@\\n-a\\n+b\\n```\\nDone."), end="")
    @@ -1 +1 @@
    -a
    +b
    """
    return "\n".join(_parse(text, complete).lines) + "\n"


def extract_code(text: str) -> str:
    """The Python file inside a full-mode LLM answer: the largest python (or untagged) fence, else the text.

    Raises :class:`DeltaError` (``parse_error``) when nothing code-like is there.

    >>> extract_code("Here:\\n```python\\nimport torch\\nx = 1\\n```\\nok")
    'import torch\\nx = 1\\n'
    """
    text = _check_text(text, "response", MAX_RESULT_CHARS, "parse_error")
    blocks = [lines for lang, lines, _ in _fenced_blocks(text.split("\n")) if lang in ("", "python", "py", "python3")]
    code = "\n".join(max(blocks, key=lambda b: sum(map(len, b)))) + "\n" if blocks else text
    if not _CODE_LINE_RE.search(code):
        raise DeltaError(
            "parse_error",
            "no Python code found: expected a ```python fence or lines such as 'import ...', 'def ...', "
            f"'class ...' or assignments; the text starts {_preview(text)}",
        )
    return code


_CODE_LINE_RE = re.compile(
    r"^[ \t]*(?:(?:import|from|def|class|return|if|for|while|with|try)\b|@\w|[A-Za-z_][\w.\[\]]*[ \t]*=[^=])",
    re.MULTILINE,
)


# ---------------------------------------------------------------------------- locating


@dataclass
class _Placement:
    hunk: _Hunk
    start: int            # 0-based source index where the old side begins (or insertion point)
    length: int           # number of source lines replaced
    new: list[Line]       # the lines that replace them
    tier: str
    indent: int = 0


class _Miss(Exception):
    """A hunk that could not be placed at this tier (internal; becomes a DeltaError).

    ``why`` may be a function: the search for the nearest source lines runs only for the
    message that is shown, the last tier's, not once per tier tried.
    """

    def __init__(self, why: str | Callable[[], str], ambiguous: bool = False):
        super().__init__(why)
        self.why = why
        self.ambiguous = ambiguous

    def __str__(self) -> str:
        return self.why() if callable(self.why) else self.why


def _label(hunk: _Hunk) -> str:
    return f"hunk {hunk.index + 1} ({hunk.header or 'no @@ header'})"


def _insertion_point(hunk: _Hunk, n: int) -> int:
    """Where a hunk without old-side lines goes: only the header can say."""
    p = hunk.header_position()
    if p is None:
        raise _Miss(f"{_label(hunk)} has no context or removed lines and no line number: it cannot be located")
    if not 0 <= p <= n:
        raise _Miss(f"{_label(hunk)} inserts at line {p + 1}, past the end of the {n}-line source")
    return p


def _exact_at(src: list[Line], p: int, old: list[Line]) -> bool:
    return 0 <= p and p + len(old) <= len(src) and src[p : p + len(old)] == old


def _locate_strict(src: list[Line], hunk: _Hunk, crlf: bool) -> _Placement:
    old = hunk.old
    p = hunk.header_position() if old else _insertion_point(hunk, len(src))
    if old and (p is None or not _exact_at(src, p, old)):
        raise _Miss(f"{_label(hunk)}: old lines do not match at the header's line")
    return _Placement(hunk, p, len(old), hunk.new, "strict")


def _choose(hunk: _Hunk, places: list[int], what: str) -> int:
    """The single place, or the header's place among several; else refuse as ambiguous."""
    if len(places) == 1:
        return places[0]
    if hunk.header_position() in places:
        return hunk.header_position()
    shown = ", ".join(str(p + 1) for p in places[:6])
    raise _Miss(
        f"{_label(hunk)}: its old lines match {what} at {len(places)} places (lines {shown}): ambiguous; "
        "add context lines that tell them apart or give the right @@ line number", ambiguous=True
    )


def _locate_recount(src: list[Line], hunk: _Hunk, crlf: bool) -> _Placement:
    old = hunk.old
    if not old:
        return _Placement(hunk, _insertion_point(hunk, len(src)), 0, hunk.new, "recount")
    places = [p for p in _anchor_starts(src, old) if _exact_at(src, p, old)]
    if not places:
        raise _Miss(lambda: _explain_miss(src, hunk))
    return _Placement(hunk, _choose(hunk, places, "exactly"), len(old), hunk.new, "recount")


def _anchor_starts(src: list[Line], old: list[Line]) -> list[int]:
    """Candidate starts: where the first non-blank old line occurs (stripped), shifted back."""
    k = next((k for k, (t, _) in enumerate(old) if t.strip()), None)
    if k is None:
        return list(range(len(src) - len(old) + 1))
    key = old[k][0].strip()
    return [i - k for i, (t, _) in enumerate(src) if t.strip() == key and 0 <= i - k <= len(src) - len(old)]


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip())


def _content_match(src: list[Line], p: int, old: list[Line]) -> tuple[int, int] | None:
    """(quality, indentation shift) of the old lines at ``p``, or None.

    Quality 0: identical; 1: differs only in trailing whitespace, CR or final newline;
    2: also a uniform indentation offset.
    """
    shift = None
    for k, (t, _) in enumerate(old):
        s = src[p + k][0].rstrip()
        h = t.rstrip()
        if not h or not s:
            if h or s:
                return None
            continue
        if s.lstrip() != h.lstrip():
            return None
        d = _indent(s) - _indent(h)
        if shift is None:
            shift = d
        elif d != shift:
            return None
    shift = shift or 0
    if shift:
        return 2, shift
    return (0 if src[p : p + len(old)] == old else 1), 0


def _reindent(text: str, shift: int, pad: str) -> str:
    if not text.strip() or shift == 0:
        return text
    if shift > 0:
        return pad * shift + text
    if _indent(text) < -shift:
        raise _Miss(f"added line {text.strip()!r} is indented less than the indentation offset {shift}")
    return text[-shift:]


def _locate_content(src: list[Line], hunk: _Hunk, crlf: bool) -> _Placement:
    old = hunk.old
    if not old:
        p, quality, shift = _insertion_point(hunk, len(src)), 0, 0
    else:
        scored = [(m, p) for p in _anchor_starts(src, old) if (m := _content_match(src, p, old)) is not None]
        if not scored:
            raise _Miss(lambda: _explain_miss(src, hunk))
        best = min(m[0] for m, _ in scored)
        p = _choose(hunk, [p for m, p in scored if m[0] == best], "equally well")
        quality, shift = next(m for m, q in scored if q == p)
    return _place(src, hunk, p, len(old), src[p : p + len(old)], "recount" if quality == 0 else "content", crlf, shift)


def _gap_at(src: list[Line], p: int, old: list[Line]) -> tuple[int, int] | None:
    """(k, g): the old side matches the source from ``p`` with the ``g`` source lines after its
    first ``k`` lines skipped (1 <= g <= MAX_GAP, lines equal up to trailing whitespace), the
    smallest such ``g``; or None. Both sides of the gap hold a non-blank matched line."""
    def same(i: int, j: int) -> bool:
        return src[i][0].rstrip() == old[j][0].rstrip()

    n, k = len(old), 0
    while k < n and p + k < len(src) and same(p + k, k):
        k += 1
    if k == n or not any(t.strip() for t, _ in old[:k]) or not any(t.strip() for t, _ in old[k:]):
        return None
    for g in range(1, MAX_GAP + 1):
        if p + n + g > len(src):
            return None
        if all(same(p + g + j, j) for j in range(k, n)):
            return k, g
    return None


def _locate_gapped(src: list[Line], hunk: _Hunk, crlf: bool) -> _Placement:
    """The content tier; for a hunk it finds nowhere, its old side with one run of skipped source lines."""
    old = hunk.old
    if not old or any(_content_match(src, p, old) is not None for p in _anchor_starts(src, old)):
        return _locate_content(src, hunk, crlf)  # placed there, or refused there (ambiguous)
    gaps = {p: m for p in range(len(src)) if (m := _gap_at(src, p, old)) is not None}
    if not gaps:
        raise _Miss(lambda: _explain_miss(src, hunk))
    g = min(g for _, g in gaps.values())
    p = _choose(hunk, [p for p, (_, h) in gaps.items() if h == g], f"with {g} skipped line(s)")
    k = gaps[p][0]
    skipped = src[p + k : p + k + g]
    added = {t.strip() for tag, t, _ in hunk.body if tag == "+"}
    # written back among the added lines: the new side holds them; else forgotten context, kept
    kept = (0, []) if all(t.strip() in added for t, _ in skipped if t.strip()) else (k, skipped)
    return _place(src, hunk, p, len(old) + g, src[p : p + k] + src[p + k + g : p + len(old) + g], "gapped", crlf,
                  kept=kept)


def _trimmed(hunk: _Hunk, lead: int, trail: int) -> _Hunk | None:
    """``hunk`` without ``lead`` leading and ``trail`` trailing lines, if all of those are
    context and what is left still has a non-blank old line and a change."""
    n = len(hunk.body)
    ends = hunk.body[:lead] + hunk.body[n - trail :]
    rest = hunk.body[lead : n - trail]
    if lead + trail >= n or any(tag != " " for tag, _, _ in ends):
        return None
    if not any(tag != " " for tag, _, _ in rest) or not any(t.strip() for tag, t, _ in rest if tag != "+"):
        return None
    start = None if hunk.old_start is None else hunk.old_start + lead
    count = None if hunk.old_count is None else hunk.old_count - lead - trail
    return replace(hunk, body=rest, bare=hunk.bare[lead : n - trail], old_start=start, old_count=count)


def _locate_fuzz(src: list[Line], hunk: _Hunk, crlf: bool) -> _Placement:
    """The gapped tier; for a hunk it finds nowhere, the content tier's search with up to
    :data:`MAX_FUZZ` context lines ignored at its start, its end, then both (fewest first).
    A hunk found at several places, whole or trimmed, is refused: fewer lines never decide."""
    try:
        return _locate_gapped(src, hunk, crlf)
    except _Miss as miss:
        if miss.ambiguous:
            raise
        for f in range(1, MAX_FUZZ + 1):
            for lead, trail in ((f, 0), (0, f), (f, f)):
                if (inner := _trimmed(hunk, lead, trail)) is None:
                    continue
                try:
                    placed = _locate_content(src, inner, crlf)
                except _Miss as trimmed_miss:
                    if trimmed_miss.ambiguous:
                        raise miss from None
                    continue
                return replace(placed, hunk=hunk, tier="fuzz")
        raise


def _place(src: list[Line], hunk: _Hunk, p: int, length: int, matched: list[Line], tier: str, crlf: bool,
           shift: int = 0, kept: tuple[int, list[Line]] = (0, [])) -> _Placement:
    """``hunk`` replacing the ``length`` source lines from ``p`` on; ``matched``: the source
    lines its old side matched there, in order (all of them but a gap's).

    Context lines come from the source (its whitespace is kept), added lines from the hunk,
    re-indented by ``shift``; ``kept`` = (k, lines): source lines that stay right before the
    old line k (0-based; 0 keeps none), after any lines added before it.
    """
    pad = next((s[0][0] for s in matched if s[0][:1].isspace()), " ")
    new: list[Line] = []
    context = iter(matched)
    used = 0
    for tag, t, eol in hunk.body:
        if tag in "- ":
            if used == kept[0]:
                new.extend(kept[1])
            line = next(context)
            if tag == " ":
                new.append(line)
            used += 1
        else:
            t = t.rstrip("\r")
            new.append((_reindent(t, shift, pad) + ("\r" if crlf and eol else ""), eol))
    reaches_end = p + length == len(src)
    if new and reaches_end and not hunk.has_marker and src:
        # no "\ No newline" marker: keep the file's final newline as it was (and an added
        # last line loses the CR of the CRLF it no longer has)
        text, eol = new[-1][0], src[-1][1]
        last_added = next(tag for tag, _, _ in reversed(hunk.body) if tag != "-") == "+"
        new[-1] = (text.removesuffix("\r") if last_added and crlf and not eol else text, eol)
    return _Placement(hunk, p, length, new, tier, shift)


def _nearest_lines(line: str, src: list[Line], n: int = 3) -> list[tuple[int, str, float]]:
    """The source lines most similar to ``line`` (difflib ratio >= 0.6), as (1-based number, text, ratio)."""
    target = line.strip()
    seen, scored = set(), []
    for i, (t, _) in enumerate(src[:5000]):
        s = t.strip()
        if not s or s in seen:
            continue
        seen.add(s)
        sm = difflib.SequenceMatcher(None, target, s)
        if sm.real_quick_ratio() >= 0.6 and sm.quick_ratio() >= 0.6 and (r := sm.ratio()) >= 0.6:
            scored.append((r, i + 1, t))
    scored.sort(key=lambda x: -x[0])
    return [(i, t, r) for r, i, t in scored[:n]]


def _explain_miss(src: list[Line], hunk: _Hunk) -> str:
    """Say which old line did not match and where the nearest similar source lines are."""
    old = hunk.old
    stripped = [t.strip() for t, _ in src]
    best_p, best_hits = None, 0
    if len(src) * len(old) <= 2_000_000:
        for p in range(len(src) - len(old) + 1):
            hits = sum(stripped[p + k] == t.strip() for k, (t, _) in enumerate(old))
            if hits > best_hits:
                best_p, best_hits = p, hits
    if best_hits == len(old):
        return (f"{_label(hunk)}: its old lines appear at source line {best_p + 1} but their indentation "
                "does not shift uniformly there")
    if best_p is not None:
        k = next(k for k, (t, _) in enumerate(old) if stripped[best_p + k] != t.strip())
        where = f"; the best partial match starts at source line {best_p + 1} ({best_hits} of {len(old)} old lines agree)"
    else:
        k = next((k for k, (t, _) in enumerate(old) if t.strip() not in stripped), 0)
        where = ""
    line = old[k][0]
    near = _nearest_lines(line, src)
    hint = ", ".join(f"{i}: {t.strip()!r} ({r:.2f})" for i, t, r in near) if near else "none similar"
    return (f"{_label(hunk)}: context not found; old line {k + 1} {line.strip()!r} does not match the source"
            f"{where}; nearest similar source lines: {hint}")


# ---------------------------------------------------------------------------- applying


def _unidiff_agrees(parsed: _Parsed) -> bool:
    """unidiff accepts the diff as written (headers, counts) and reads it as we do."""
    try:
        files = unidiff.PatchSet("\n".join(parsed.lines) + "\n")
    # unidiff raises assorted exception types on malformed text; any of them means "not strict"
    except Exception:  # noqa: BLE001
        return False
    theirs = []
    for f in files:
        for h in f:
            body = []
            for line in h:
                if line.line_type == "\\":
                    if body:
                        body[-1] = (body[-1][0], body[-1][1], False)
                else:
                    body.append((line.line_type, line.value.removesuffix("\n"), True))
            theirs.append((h.source_start, h.source_length, body))
    ours = [(h.old_start, h.old_count, h.body) for h in parsed.hunks]
    return theirs == ours


def _place_all(src: list[Line], hunks: list[_Hunk], locate: Callable, crlf: bool) -> tuple[list[_Placement], dict[int, _Miss]]:
    placed, missed = [], {}
    for hunk in hunks:
        try:
            placed.append(locate(src, hunk, crlf))
        except _Miss as e:
            missed[hunk.index] = e
    return placed, missed


def _compose(src: list[Line], placed: list[_Placement]) -> str:
    placed = sorted(placed, key=lambda pl: (pl.start, pl.length))
    for a, b in zip(placed, placed[1:]):
        if b.start < a.start + a.length or (a.length == b.length == 0 and a.start == b.start):
            raise DeltaError(
                "apply_error",
                f"{_label(a.hunk)} and {_label(b.hunk)} overlap (source lines {a.start + 1}-{a.start + a.length} "
                f"and {b.start + 1}-{b.start + b.length}): merge them into one hunk",
            )
    out: list[Line] = []
    pos = 0
    for pl in placed:
        out.extend(src[pos : pl.start])
        out.extend(pl.new)
        pos = pl.start + pl.length
    out.extend(src[pos:])
    out = [(t, True) for t, _ in out[:-1]] + out[-1:]  # only the last line may lack its newline
    code = _join(out)
    if len(code) > MAX_RESULT_CHARS:
        raise DeltaError("apply_error", f"the result has {len(code):,} characters, over the cap of {MAX_RESULT_CHARS:,}")
    return code


def _results(placed: list[_Placement], hunks: list[_Hunk], missed: dict[int, _Miss]) -> tuple[HunkResult, ...]:
    by_index = {pl.hunk.index: pl for pl in placed}
    out = []
    for h in hunks:
        header_pos = h.header_position()
        header_start = None if header_pos is None else header_pos + 1
        pl = by_index.get(h.index)
        if pl is None:
            out.append(HunkResult(h.index, h.header, None, False, None, header_start, None, 0, str(missed[h.index])))
            continue
        offset = None if header_start is None else pl.start + 1 - header_start
        out.append(HunkResult(h.index, h.header, pl.tier, True, pl.start + 1, header_start, offset, pl.indent))
    return tuple(out)


def apply_delta(source: str, delta: str, partial: bool = False, complete: bool | None = None) -> Applied:
    """Apply a unified diff (possibly wrapped in an LLM's answer) to ``source``.

    Tries the tiers strict -> recount -> content -> gapped -> fuzz (-> partial when ``partial=True``)
    described in the module docstring; returns the first that places every hunk.
    ``complete``: whether ``delta`` is known to be whole (see the module docstring).
    Raises :class:`DeltaError`: ``parse_error`` if no diff can be read, ``apply_error``
    if a hunk's context is not found, is ambiguous, or hunks overlap.

    >>> a = "def f(x):\\n    return x\\n"
    >>> r = apply_delta(a, make_delta(a, "def f(x):\\n    return 2 * x\\n"))
    >>> r.tier, r.code
    ('strict', 'def f(x):\\n    return 2 * x\\n')
    """
    parsed = _parse(delta, complete)
    source = _check_text(source, "source", MAX_RESULT_CHARS, "apply_error")
    src = _split(source)
    crlf = sum(t.endswith("\r") for t, _ in src) * 2 > len(src)
    passes = [("recount", _locate_recount), ("content", _locate_content), ("gapped", _locate_gapped), ("fuzz", _locate_fuzz)]
    if _unidiff_agrees(parsed):
        passes.insert(0, ("strict", _locate_strict))
    for tier, locate in passes:
        placed, missed = _place_all(src, parsed.hunks, locate, crlf)
        if not missed:
            return Applied(_compose(src, placed), tier, _results(placed, parsed.hunks, missed))
    if partial and placed:
        return Applied(_compose(src, placed), "partial", _results(placed, parsed.hunks, missed))
    failed = "; ".join(str(missed[i]) for i in sorted(missed))
    raise DeltaError("apply_error", f"{len(missed)} of {len(parsed.hunks)} hunk(s) did not apply: {failed}")

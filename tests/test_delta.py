"""Deltas: round trips, every tier on a known perturbation, adversarial input, fuzzing."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cem_nas import delta as D
from cem_nas import zoo
from cem_nas.delta import DeltaError, apply_delta, count_lines, count_tokens, extract_code, extract_delta, make_delta

# Two identical residual blocks (lines 12-15 and 18-21) make ambiguous context possible.
SAMPLE = '''import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.stem = nn.Conv2d(in_shape[1], 32, 3, padding=1)
        self.head = nn.Linear(32, out_shape[0])

    def block_a(self, x):
        y = self.stem(x)
        y = torch.relu(y)
        y = y + x
        return y

    def block_b(self, x):
        y = self.stem(x)
        y = torch.relu(y)
        y = y + x
        return y

    def forward(self, x):
        x = self.block_a(self.stem(x))
        x = self.block_b(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.head(x)

    def train_setup(self, prm):
        self.criteria = (nn.CrossEntropyLoss(),)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=prm['lr'], momentum=prm['momentum'])

    def learn(self, train_data):
        for inputs, labels in train_data:
            self.optimizer.zero_grad()
            loss = self.criteria[0](self(inputs), labels)
            loss.backward()
            self.optimizer.step()
'''

# Two separate edits: the stem width (line 8-9) and a dropout before the head (line 27).
TARGET = (SAMPLE.replace("32, 3, padding=1)", "64, 5, padding=2)")
          .replace("nn.Linear(32,", "nn.Linear(64,")
          .replace("        return self.head(x)\n", "        x = nn.functional.dropout(x, 0.2, self.training)\n        return self.head(x)\n"))


def hunk_headers(delta: str) -> list[str]:
    return [line for line in delta.split("\n") if line.startswith("@@")]


def map_body(delta: str, f) -> str:
    """Apply ``f`` to every hunk body line (not headers)."""
    out = []
    for line in delta.split("\n"):
        body = line[:1] in (" ", "-", "+") and not line.startswith(("--- ", "+++ "))
        out.append(f(line) if body else line)
    return "\n".join(out)


def shift_headers(delta: str, by: int) -> str:
    return re.sub(r"@@ -(\d+)", lambda m: f"@@ -{int(m.group(1)) + by}", delta)


def outcome(source: str, delta: str, **kw) -> tuple[str, object]:
    """(tier, Applied) or (error kind, DeltaError): the two allowed endings."""
    try:
        r = apply_delta(source, delta, **kw)
    except DeltaError as e:
        return e.kind, e
    return r.tier, r


BASE = make_delta(SAMPLE, TARGET)


def test_base_delta_has_two_hunks():
    assert hunk_headers(BASE) == ["@@ -5,8 +5,8 @@", "@@ -24,6 +24,7 @@"]


# ---------------------------------------------------------------------------- tiers on known perturbations

CASES = {
    # name: (delta, expected tier)
    "exact": (BASE, "strict"),
    "fenced with chatter": ("Sure! Here is the change:\n\n```diff\n" + BASE + "```\n\nThis widens the stem.\n", "strict"),
    "reordered hunks": (
        "--- a/net.py\n+++ b/net.py\n" + "@@" + BASE.split("\n@@")[2] + "\n@@" + BASE.split("\n@@")[1].rstrip("\n") + "\n",
        "strict",
    ),
    "markdown bullets after": (BASE + "\nChanges:\n- wider stem (64 channels)\n+ dropout before the head\n", "strict"),
    "bare blank context line": (BASE.replace("\n \n", "\n\n"), "strict"),
    "top-level context line without its space": (BASE.replace("\n class Net", "\nclass Net"), "recount"),
    "wrong line numbers": (shift_headers(BASE, 7), "recount"),
    "wrong counts": (BASE.replace("@@ -5,8 +5,8 @@", "@@ -5,9 +5,7 @@").replace("@@ -24,6 +24,7 @@", "@@ -24,4 +24,5 @@"), "recount"),
    "counts too large": (BASE.replace("@@ -5,8 +5,8 @@", "@@ -5,10 +5,10 @@").replace("@@ -24,6 +24,7 @@", "@@ -24,9 +24,9 @@"), "recount"),
    "no numbers": (re.sub(r"@@ .* @@", "@@ @@", BASE), "recount"),
    "missing file headers": (BASE.split("+++ b/net.py\n", 1)[1], "recount"),
    "trailing whitespace drift": (map_body(BASE, lambda l: l + "  " if l[:1] == " " and l.strip() else l), "content"),
    "crlf diff": (BASE.replace("\n", "\r\n"), "content"),
    "indentation drift": (map_body(BASE, lambda l: l[0] + "    " + l[1:] if l[1:].strip() else l), "content"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_perturbed_delta_applies_at_expected_tier(name):
    delta, tier = CASES[name]
    got, r = outcome(SAMPLE, delta)
    assert (got, r.code if got in D.TIERS else str(r)) == (tier, TARGET)
    assert all(h.applied for h in r.hunks) and len(r.hunks) == len(hunk_headers(delta))


def test_hunk_body_right_after_file_headers():
    r = apply_delta(SAMPLE, "--- a/net.py\n+++ b/net.py\n" + BASE.split("@@ -24,6 +24,7 @@\n")[1])
    want = SAMPLE.replace("        return self.head(x)\n", "        x = nn.functional.dropout(x, 0.2, self.training)\n        return self.head(x)\n")
    assert (r.tier, r.code, r.hunks[0].header, r.hunks[0].header_start) == ("recount", want, "", None)


def test_wrong_line_numbers_report_the_offset():
    r = apply_delta(SAMPLE, shift_headers(BASE, 7))
    assert [(h.start, h.header_start, h.offset, h.tier) for h in r.hunks] == [(5, 12, -7, "recount"), (24, 31, -7, "recount")]


def test_shifted_code_is_found_by_content():
    shifted = "# a licence header\n# of three\n# lines\n" + SAMPLE
    r = apply_delta(shifted, BASE)
    assert (r.tier, r.code) == ("recount", "# a licence header\n# of three\n# lines\n" + TARGET)
    assert [h.offset for h in r.hunks] == [3, 3]


def test_indentation_drift_reindents_added_lines():
    r = apply_delta(SAMPLE, CASES["indentation drift"][0])
    assert r.code == TARGET and [h.indent for h in r.hunks] == [-4, -4]


def test_source_indentation_drift_also_applies():
    indented = "".join("  " + line if line.strip() else line for line in SAMPLE.splitlines(keepends=True))
    want = "".join("  " + line if line.strip() else line for line in TARGET.splitlines(keepends=True))
    r = apply_delta(indented, BASE)
    assert (r.tier, r.code, [h.indent for h in r.hunks]) == ("content", want, [2, 2])


def test_crlf_source_keeps_crlf():
    r = apply_delta(SAMPLE.replace("\n", "\r\n"), BASE)
    assert (r.tier, r.code) == ("content", TARGET.replace("\n", "\r\n"))


def test_source_without_final_newline():
    r = apply_delta(SAMPLE.rstrip("\n"), make_delta(SAMPLE, SAMPLE.replace("self.optimizer.step()", "self.optimizer.step()  # done")))
    assert (r.tier, r.code) == ("content", SAMPLE.rstrip("\n") + "  # done")


def test_trailing_whitespace_in_source_is_kept_on_context_lines():
    source = SAMPLE.replace("super().__init__()\n", "super().__init__()   \n")
    r = apply_delta(source, BASE)
    assert (r.tier, r.code) == ("content", TARGET.replace("super().__init__()\n", "super().__init__()   \n"))


def test_ambiguous_context_is_refused_without_a_matching_header():
    edit = make_delta(SAMPLE, SAMPLE.replace("    def block_b(self, x):\n        y = self.stem(x)\n        y = torch.relu(y)\n",
                                             "    def block_b(self, x):\n        y = self.stem(x)\n        y = torch.sigmoid(y)\n"), context=1)
    assert hunk_headers(edit) == ["@@ -18,3 +18,3 @@"]
    assert outcome(SAMPLE, edit)[0] == "strict"
    for bad in (re.sub(r"@@ .* @@", "@@ @@", edit), shift_headers(edit, 2)):
        kind, err = outcome(SAMPLE, bad)
        assert kind == "apply_error" and "ambiguous" in err.message and "lines 12, 18" in err.message


def test_header_breaks_a_tie_at_the_content_tier():
    edit = make_delta(SAMPLE, SAMPLE.replace("        y = y + x\n        return y\n\n    def forward",
                                             "        y = y - x\n        return y\n\n    def forward"), context=1)
    drifted = map_body(edit, lambda l: l + " " if l[:1] == " " else l)
    r = apply_delta(SAMPLE, drifted)
    assert (r.tier, r.hunks[0].start, r.hunks[0].offset) == ("content", 19, 0)
    assert r.code == SAMPLE.replace("        y = y + x\n        return y\n\n    def forward", "        y = y - x\n        return y\n\n    def forward")


# runs/default_1205, cycle 0: the 0.5B left ``nn.ReLU(),`` out of its old side and wrote it
# back among its added lines
SKIPPED_RELU = (
    "--- a/net.py\n+++ b/net.py\n@@ -14,6 +14,8 @@\n         self.features = nn.Sequential(\n"
    "             nn.Conv2d(in_shape[1], 16, 3, padding=1),\n             nn.BatchNorm2d(16),\n"
    "+            nn.ReLU(),\n+            nn.GELU(),\n             nn.MaxPool2d(2),\n"
    "             nn.Conv2d(16, 32, 3, padding=1),\n             nn.BatchNorm2d(32),\n"
)


def test_an_old_side_that_skips_a_source_line_applies_its_new_side_over_the_gap():
    base = zoo.source("plainnet")
    relu = "            nn.BatchNorm2d(16),\n            nn.ReLU(),\n            nn.MaxPool2d(2),\n"
    assert relu in base, "the zoo's plainnet changed: take another stored answer"
    r = apply_delta(base, SKIPPED_RELU)
    assert (r.tier, r.hunks[0].tier, r.hunks[0].start) == ("gapped", "gapped", 14)
    assert r.code == base.replace(relu, relu.replace("ReLU(),\n", "ReLU(),\n            nn.GELU(),\n"))


def test_a_skipped_line_no_added_line_repeats_is_forgotten_context_and_stays():
    forgot = "@@ @@\n     def block_a(self, x):\n         y = self.stem(x)\n-        y = y + x\n+        y = y * x\n         return y\n"
    r = apply_delta(SAMPLE, forgot)
    assert (r.tier, r.code) == ("gapped", SAMPLE.replace("relu(y)\n        y = y + x\n        return y\n\n    def block_b",
                                                         "relu(y)\n        y = y * x\n        return y\n\n    def block_b"))


def test_a_misremembered_end_of_context_is_ignored_at_the_fuzz_tier():
    """runs/bench_diversity_1205b/hints_reject, cycle 0: the 0.5B's last context line is a conv
    where vgg has a pooling layer; like GNU patch's fuzz, up to MAX_FUZZ end lines are ignored."""
    base = zoo.source("vgg")
    conv = "            nn.Conv2d(16, 16, 3, padding=1),\n"
    block = conv + "            nn.BatchNorm2d(16),\n            nn.ReLU(),\n"
    assert base.count(block + block) == 1 and base.count(block + block + conv) == 0, "the zoo's vgg changed"
    body = "".join(" " + line + "\n" for line in block.splitlines())
    delta = f"@@ -14,12 +14,12 @@\n{body}-{conv}+{conv.replace('3, padding=1', '5, padding=2')}{body[len(conv) + 1:]} {conv}"
    r = apply_delta(base, delta)
    assert (r.tier, r.hunks[0].start) == ("fuzz", base[: base.index(block + block)].count("\n") + 1)
    assert r.code == base.replace(block + block, block + block.replace("3, padding=1", "5, padding=2"))
    # what is left once the ends are ignored must still hold a change: a hunk of context only never fuzzes
    assert outcome(base, f"@@ @@\n x = 1\n {conv}+    y = 2\n")[0] == "apply_error"


def test_a_gap_is_refused_when_ambiguous_too_long_or_at_an_end():
    # the two residual blocks: "relu" skipped between stem and "y + x" fits both
    skip = "@@ @@\n         y = self.stem(x)\n+        y = torch.relu(y)\n+        y = torch.tanh(y)\n         y = y + x\n"
    kind, err = outcome(SAMPLE, skip)
    assert kind == "apply_error" and "ambiguous" in err.message and "lines 12, 18" in err.message
    r = apply_delta(SAMPLE, skip.replace("@@ @@", "@@ -18,2 +18,3 @@"))
    assert (r.tier, r.code) == ("gapped", SAMPLE.replace("relu(y)\n        y = y + x\n        return y\n\n    def forward",
                                                         "relu(y)\n        y = torch.tanh(y)\n        y = y + x\n        return y\n\n    def forward"))
    lines = SAMPLE.split("\n")
    far = f"@@ @@\n {lines[1]}\n+import os\n {lines[D.MAX_GAP + 3]}\n"  # MAX_GAP + 1 lines between them
    assert lines[D.MAX_GAP + 2].strip(), "pick an end line that is not blank"
    assert "context not found" in outcome(SAMPLE, far)[1].message
    assert outcome(SAMPLE, far.replace(f" {lines[D.MAX_GAP + 3]}", f" {lines[D.MAX_GAP + 2]}"))[0] == "gapped"
    # a line the source lacks at either end is no gap (the fuzz tier ignores it)
    for end in (f"@@ @@\n {lines[0]}\n+import os\n {lines[1]}\n x = 1\n", f"@@ @@\n x = 1\n+import os\n {lines[0]}\n {lines[1]}\n"):
        assert outcome(SAMPLE, end)[0] == "fuzz"


def test_missing_context_is_refused_and_the_nearest_line_named():
    kind, err = outcome(SAMPLE, BASE.replace(" self.head = nn.Linear(32, out_shape[0])", " self.head = nn.Linear(32, 10)"))
    assert kind == "apply_error"
    assert "hunk 1" in err.message and "'self.head = nn.Linear(32, 10)'" in err.message
    assert "9: 'self.head = nn.Linear(32, out_shape[0])'" in err.message


def test_partial_applies_the_hunks_that_verify():
    bad = BASE.replace(" x = torch.flatten(", " x = torch.ravel(")  # next to the change: more than fuzz
    assert outcome(SAMPLE, bad)[0] == "apply_error"
    r = apply_delta(SAMPLE, bad, partial=True)
    assert r.tier == "partial"
    assert [(h.applied, h.tier) for h in r.hunks] == [(True, "recount"), (False, None)]
    assert "torch.ravel" in r.hunks[1].message
    assert r.code == SAMPLE.replace("32, 3, padding=1)", "64, 5, padding=2)").replace("nn.Linear(32,", "nn.Linear(64,")


def test_partial_with_nothing_applicable_still_fails():
    assert outcome(SAMPLE, BASE.replace(" ", " zz", 1).replace("self.", "this."), partial=True)[0] == "apply_error"


def test_overlapping_hunks_are_an_error():
    first = BASE.split("@@ -24,6")[0]
    twice = first + first.split("+++ b/net.py\n")[1]
    kind, err = outcome(SAMPLE, twice)
    assert kind == "apply_error" and "overlap" in err.message


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "no unified diff"),
        ("I think you should widen the network and add dropout.", "no unified diff"),
        ("\x00\xff\x1b[31m\ud7ff binary \x7f junk \x00\n@\n+", "no unified diff"),
        (BASE[: BASE.index("x = nn.functional.dropout") + 10], "truncated"),
        ("```diff\n" + BASE[: BASE.rindex(" return self.head")], "truncated"),
        (BASE[: BASE.index("@@ -24,6") + 7], "truncated"),
        (BASE.replace("\n-        self.stem", "\nNow the stem:\n\n-        self.stem"), "outside any hunk"),
        (BASE[: BASE.index(" return self.head(x)")], "truncated"),
        (b"@@ -1 +1 @@\n-a\n+b\n", "must be str"),
        (None, "must be str"),
        ("@@ @@\n+x\n" + " " * D.MAX_DELTA_CHARS, "over the cap"),
    ],
)
def test_unreadable_deltas_are_parse_errors(text, needle):
    kind, err = outcome(SAMPLE, text)
    assert kind == "parse_error" and needle in err.message


def test_a_diff_without_changed_lines_is_verified_and_changes_nothing():
    context_only = "--- a/net.py\n+++ b/net.py\n@@ -1,2 +1,2 @@\n import torch\n from torch import nn\n"
    assert apply_delta(SAMPLE, context_only).code == SAMPLE  # the loop calls this `unchanged`
    assert outcome(SAMPLE, context_only.replace("import torch", "import numpy"))[0] == "apply_error"


# Four cycle-0 responses of the default LLM run (issue 12) with their baselines: each a
# closed ```diff block holding one context line, one '-' and one '+' line, the trailing
# context line its header counts left out. The last one changes nothing.
RESPONSES = [
    ("vgg", "```diff\n@@ -14,3 +14,3 @@\n         self.features = nn.Sequential(\n"
            "-            nn.Conv2d(in_shape[1], 16, 3, padding=1),\n"
            "+            nn.Conv2d(in_shape[1], 32, 3, padding=1),\n```",
     "nn.Conv2d(in_shape[1], 16, 3, padding=1)", "nn.Conv2d(in_shape[1], 32, 3, padding=1)"),
    ("mlp", "```diff\n@@ -21,3 +21,3 @@\n         self.classifier = nn.Sequential(\n"
            "-            nn.Dropout(prm['dropout']),\n+            nn.Dropout(0.5),\n```",
     "nn.Dropout(prm['dropout'])", "nn.Dropout(0.5)"),
    ("alexnet", "```diff\n@@ -45,3 +45,3 @@\n         self.criteria = (nn.CrossEntropyLoss().to(self.device),)\n"
                "-        self.optimizer = torch.optim.SGD(self.parameters(), lr=prm['lr'], momentum=prm['momentum'])\n"
                "+        self.optimizer = torch.optim.AdamW(self.parameters(), lr=prm['lr'])\n```",
     "torch.optim.SGD(self.parameters(), lr=prm['lr'], momentum=prm['momentum'])",
     "torch.optim.AdamW(self.parameters(), lr=prm['lr'])"),
    ("plainnet", "```diff\n@@ -13,3 +13,3 @@\n         self.device = device\n"
                 "-        self.features = nn.Sequential(\n+        self.features = nn.Sequential(\n```", "", ""),
]


@pytest.mark.parametrize("name, response, old, new", RESPONSES, ids=[r[0] for r in RESPONSES])
def test_completeness_travels_with_the_extracted_delta(name, response, old, new):
    base = zoo.source(name)
    want = base.replace(old, new, 1) if old else base
    assert apply_delta(base, response).code == want  # the closed fence proves the short hunk whole
    bare = extract_delta(response)
    kind, err = outcome(base, bare)  # stripped of its fence, the heuristic misreads it ...
    assert kind == "parse_error" and "looks truncated" in err.message
    r = apply_delta(base, bare, complete=True)  # ... so the extraction's verdict travels with it
    assert (r.code, r.tier) == (want, "recount")
    # a generation cut by its token limit inside the block is refused, whatever its counts say
    open_block = response.removesuffix("```")
    kind, err = outcome(base, open_block, complete=False)
    assert kind == "parse_error" and "token limit" in err.message
    assert apply_delta(base, open_block, complete=True).code == want  # stopped on EOS: whole
    assert extract_delta(response, complete=False) == bare  # the block closed before the limit


def test_token_limit_after_the_diff_keeps_the_diff():
    cut_in_chatter = BASE + "Now the explanation of why this wid"
    assert apply_delta(SAMPLE, extract_delta(cut_in_chatter, complete=False), complete=True).code == TARGET


def test_truncation_at_a_line_boundary_applies_what_is_complete():
    cut = BASE[: BASE.index("@@ -24")]
    r = apply_delta(SAMPLE, cut)
    assert (r.tier, len(r.hunks)) == ("strict", 1)


def test_insertion_without_context_needs_a_line_number():
    assert apply_delta("a\nb\n", "@@ -1,0 +2 @@\n+x\n").code == "a\nx\nb\n"
    kind, err = outcome("a\nb\n", "@@ @@\n+x\n")
    assert kind == "apply_error" and "cannot be located" in err.message


def test_result_over_the_cap_is_an_apply_error(monkeypatch):
    monkeypatch.setattr(D, "MAX_RESULT_CHARS", len(TARGET) - 1)
    kind, err = outcome(SAMPLE, BASE)
    assert kind == "apply_error" and "cap" in err.message


def test_source_that_is_not_text_is_an_apply_error():
    assert outcome(None, BASE)[0] == "apply_error"


def test_delta_error_kind_is_checked():
    with pytest.raises(ValueError, match="kind"):
        DeltaError("oops", "x")


# ---------------------------------------------------------------------------- extraction and counting


def test_extract_delta_keeps_only_diff_lines():
    text = "Plan:\n1. widen\n```diff\n" + BASE + "```\nand between\n```diff\n@@ -1 +1 @@\n-a\n+b\n```\n"
    assert extract_delta(text) == BASE


def test_extract_delta_skips_chatter_between_hunks():
    first, second = BASE.split("@@ -24,6")
    assert extract_delta(first + "\nNow the head:\n@@ -24,6" + second) == BASE


def test_extract_delta_without_diff_is_a_parse_error():
    with pytest.raises(DeltaError) as e:
        extract_delta("no diff here\njust words\n")
    assert e.value.kind == "parse_error"


def test_extract_code_takes_the_largest_python_fence():
    text = "Here:\n```python\nx = 1\n```\nand the model:\n```python\n" + SAMPLE + "```\nEnjoy."
    assert extract_code(text) == SAMPLE
    assert extract_code(SAMPLE) == SAMPLE
    truncated = "```python\n" + SAMPLE[:200]
    assert extract_code(truncated) == SAMPLE[:200] + "\n"


@pytest.mark.parametrize("text", ["", "Sorry, I cannot help with that.", "```\n\n```", 42])
def test_extract_code_without_code_is_a_parse_error(text):
    with pytest.raises(DeltaError) as e:
        extract_code(text)
    assert e.value.kind == "parse_error"


def test_counters():
    assert count_lines(SAMPLE) == 38 and count_lines(SAMPLE.rstrip("\n")) == 38
    assert count_tokens("self.fc = nn.Linear(64, 10)  # head") == 14
    assert count_tokens(BASE) > count_tokens(TARGET) / 4  # a delta is a fraction of the file


# ---------------------------------------------------------------------------- property tests

POOL = [
    "        x = torch.relu(x)",
    "        self.drop = nn.Dropout(prm['dropout'])",
    "",
    "    # a comment",
    "        return x",
    "        x = self.head(x)",
]


@st.composite
def edited_pair(draw, sources=tuple(zoo.source(n) for n in zoo.names()) + (SAMPLE,)):
    """(before, after): a real model file and a copy with 1-6 random line edits (sometimes CRLF)."""
    before = draw(st.sampled_from(sources))
    lines = before.split("\n")[:-1]
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if op == "insert":
            lines.insert(i, draw(st.sampled_from(POOL)))
        elif op == "delete" and lines:
            del lines[i]
        elif op == "replace" and lines:
            lines[i] = lines[i].replace("x", "h") if "x" in lines[i] else draw(st.sampled_from(POOL))
        elif lines:
            lines.insert(i, lines[i])
    after = "\n".join(lines) + "\n"
    if draw(st.booleans()):
        before = before.rstrip("\n")
    if draw(st.booleans()):
        after = after.rstrip("\n")
    if draw(st.integers(0, 4)) == 0:
        before, after = before.replace("\n", "\r\n"), after.replace("\n", "\r\n")
    return before, after


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited_pair(), st.sampled_from([0, 1, 3]))
def test_round_trip_is_strict(pair, context):
    before, after = pair
    delta = make_delta(before, after, context=context)
    if before == after:
        assert delta == "" and outcome(before, delta)[0] == "parse_error"
        return
    r = apply_delta(before, delta)
    assert (r.tier, r.code) == ("strict", after)


PERTURB = {
    # name: (function of the delta, lowest tier it may apply at)
    "fence": (lambda d: "Here:\n```diff\n" + d + "```\nDone.", "strict"),
    "shift": (lambda d: shift_headers(d, 3), "recount"),
    "nonumbers": (lambda d: re.sub(r"@@ .* @@", "@@ @@", d), "recount"),
    "noheaders": (lambda d: d.split("+++ b/net.py\n", 1)[1], "recount"),
    "crlf": (lambda d: d.replace("\n", "\r\n"), "content"),
    "indent": (lambda d: map_body(d, lambda l: l[0] + "  " + l[1:] if l[1:].strip() else l), "content"),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited_pair(), st.sampled_from(sorted(PERTURB)))
def test_perturbed_round_trip_applies_or_refuses_as_ambiguous(pair, name):
    """With 3 context lines a perturbed delta still gives ``after`` exactly, unless refused as ambiguous."""
    before, after = pair
    if before.rstrip("\n") == after.rstrip("\n"):
        return
    perturb, lowest = PERTURB[name]
    got, r = outcome(before, perturb(make_delta(before, after)))
    if got == "apply_error":
        assert "ambiguous" in r.message and lowest != "strict"
        return
    assert got in D.TIERS[D.TIERS.index(lowest) : 3], (got, str(r))
    assert r.code.replace("\r\n", "\n") == after.replace("\r\n", "\n")


DIFFISH = st.lists(
    st.one_of(
        st.sampled_from(["@@ @@", "@@ -1,2 +1,3 @@", "@@ -0,0 +1 @@", "--- a/net.py", "+++ b/net.py", "```diff", "```",
                         "\\ No newline at end of file", "", " ", "+", "-", "\r"]),
        st.builds(lambda tag, s: tag + s, st.sampled_from(" +-@\\"), st.text(max_size=12)),
        st.text(max_size=20),
    ),
    max_size=25,
).map("\n".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=40), DIFFISH), st.one_of(st.text(max_size=40), DIFFISH, st.just(SAMPLE)), st.booleans())
def test_any_input_ends_in_applied_or_delta_error(source, delta, partial):
    got, r = outcome(source, delta, partial=partial)
    assert got in D.TIERS or got in D.ERROR_KINDS
    if got in D.TIERS:
        assert isinstance(r.code, str) and r.tier == got


SAMPLE_LINES = SAMPLE.split("\n")[:-1]


@st.composite
def diff_from_source_lines(draw):
    """A diff-shaped text built from SAMPLE's own lines: headers right, wrong or absent."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, len(SAMPLE_LINES) - 1))
        n = draw(st.integers(1, 6))
        header = draw(st.sampled_from(["@@ @@", f"@@ -{start + 1},{n} +{start + 1},{n} @@", f"@@ -{start + 3} +{start} @@"]))
        out.append(header)
        for line in SAMPLE_LINES[start : start + n]:
            tag = draw(st.sampled_from(" " * 4 + "-+"))
            out.append(tag + (line if draw(st.integers(0, 9)) else line.upper()))
            if draw(st.integers(0, 6)) == 0:
                out.append("+" + draw(st.sampled_from(POOL)))
    return "\n".join(out) + draw(st.sampled_from(["\n", ""]))


@settings(max_examples=300, deadline=None)
@given(diff_from_source_lines(), st.booleans())
def test_applied_hunks_sit_where_their_old_lines_are(delta, partial):
    """Whatever applies, each applied hunk's old side is in the source at the reported line."""
    got, r = outcome(SAMPLE, delta, partial=partial)
    assert got in D.TIERS or got in D.ERROR_KINDS
    if got not in D.TIERS:
        return
    old_sides = {h.index: [t.strip() for t, _ in h.old] for h in D._parse(delta).hunks}
    for h in r.hunks:
        if h.applied:
            old = old_sides[h.index]
            at = [t.strip() for t in SAMPLE_LINES[h.start - 1 :]]
            if h.tier in ("gapped", "fuzz"):  # less one run of lines inside it; less a few at its ends
                fuzz = D.MAX_FUZZ if h.tier == "fuzz" else 0
                inner = [old[a : len(old) - b] for a in range(fuzz + 1) for b in range(fuzz + 1)]
                assert any(at[:k] + at[k + g : len(o) + g] == o for o in inner if o for k in range(len(o))
                           for g in range(D.MAX_GAP + 1)), h
            else:
                assert at[: len(old)] == old
        else:
            assert got == "partial" and h.message


def test_token_limit_inside_a_later_hunk_keeps_the_hunks_written_in_full():
    """A model asked for one change that writes one good hunk and runs to the limit in the
    next: the proposal is the first hunk; with no hunk written in full it is refused."""
    base = zoo.source("resnet")
    old = "            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),"
    assert old in base, "the zoo's resnet changed: pick another line"
    first = ("```diff\n--- a/net.py\n+++ b/net.py\n@@ -13,3 +13,3 @@\n         self.body = nn.Sequential(\n"
             f"-{old}\n+{old.replace('3, stride', '5, stride')}\n             nn.BatchNorm2d(c_out),\n")
    cut = first + "@@ -34,7 +34,7 @@\n         super().__init__()\n       "
    delta = extract_delta(cut, complete=False)
    assert "@@ -34" not in delta and delta.count("@@") == 2
    for end in ("@@ -34,7 +34,7 @@\n", "--- a/net.py\n+++ b/net.py\n@@ -34,7 +34,7 @@\n         sup"):
        assert extract_delta(first + end, complete=False) == delta  # cut at its header, or after file headers
    assert apply_delta(base, delta, complete=True).code == base.replace(old, old.replace("3, stride", "5, stride"))
    kind, err = outcome(base, "```diff\n@@ -34,7 +34,7 @@\n         super().__init__()\n", complete=False)
    assert kind == "parse_error" and "only hunk" in err.message


def test_a_hunk_that_rewrites_lines_as_themselves_is_dropped_beside_a_real_edit():
    """The 0.5B repeats a region it misremembers as a no-op hunk next to its edit; that hunk
    asks for nothing, so neither its context nor an overlap with the edit can refuse the edit."""
    base = zoo.source("resnet")
    old = "            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),"
    new = old.replace("3, stride", "5, stride")
    edit = f"@@ -13,3 +13,3 @@\n         self.body = nn.Sequential(\n-{old}\n+{new}\n             nn.BatchNorm2d(c_out),\n"
    noop = "@@ -13,2 +13,2 @@\n-        self.body = nn.Sequential(\n+        self.body = nn.Sequential(\n"
    ghost = "--- a/net.py\n+++ b/net.py\n@@ -90,2 +90,2 @@\n-    misremembered()\n+    misremembered()\n"
    for text in (edit + noop, noop + edit, edit + ghost):
        delta = extract_delta("```diff\n--- a/net.py\n+++ b/net.py\n" + text + "```", complete=True)
        assert delta.count("@@") == 2 and "misremembered" not in delta
        assert apply_delta(base, delta, complete=True).code == base.replace(old, new)
    with pytest.raises(DeltaError) as err:  # nothing but no-ops: read like any diff, and verified
        apply_delta(base, ghost, complete=True)
    assert err.value.kind == "apply_error"
    assert apply_delta(base, noop, complete=True).code == base


def test_cut_after_hunks_ends_an_answer_after_its_changing_hunks():
    one = "```diff\n--- a/net.py\n+++ b/net.py\n@@ -1 +1 @@\n-a\n+b\n"
    assert D.cut_after_hunks(one + "@@ -5 +5 @@\n-c", 1) == one
    assert D.cut_after_hunks(one, 1) is None  # no later header: nothing to cut
    noop_first = "```diff\n@@ -1 +1 @@\n-a\n+a\n@@ -3 +3 @@\n-b\n+c\n"
    assert D.cut_after_hunks(noop_first + "@@ -9", 1) == noop_first
    assert D.cut_after_hunks(one + "@@ -5 +5 @@\n-c\n+d\n@@ -7", 2) == one + "@@ -5 +5 @@\n-c\n+d\n"

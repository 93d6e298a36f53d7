"""Prompt templates: one per mode, and the completion format the model learns to write.

The completion is always one fenced block (```diff or ```python) so that generation can
stop at the closing fence and the warm start, the CE update and the extraction all agree
on one format.
"""
from __future__ import annotations

from typing import Sequence

from cem_nas.records import TaskSpec
from cem_nas.scope import check_scope

MODES = ("delta", "full")

#: Version of the templates below; part of the warm-start cache key, bump on any change.
TEMPLATE_VERSION = 3

_TASK = (
    "Dataset: {dataset}. The network gets input tensors of shape (batch, {c}, {h}, {w}) "
    "and must output logits of shape (batch, {k}) for {k} classes.\n"
    "Here is the PyTorch model file net.py:\n```python\n{code}```\n"
)
_CHANGE = {
    "file": "Propose one small change to this architecture that could raise its accuracy after one epoch of training.",
    "architecture": (
        "Propose one small change to the architecture of this network (its layers, in __init__ and forward) "
        "that could raise its accuracy after one epoch of training. The training recipe is fixed: keep "
        "supported_hyperparameters, train_setup and learn exactly as they are."
    ),
}
_ANSWER = {
    "delta": (
        "Answer with a unified diff of net.py only (@@ hunks with exact context lines, - removed and + added "
        "lines) inside one ```diff block, with no explanation."
    ),
    "full": "Answer with the complete new net.py inside one ```python block, with no explanation.",
}
_FENCE = {"delta": "diff", "full": "python"}


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known mode, else raise a ValueError naming the choices."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    return mode


def _ended(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


_EXAMPLES = "Examples of small changes made to other model files:\n"


def user_message(task: TaskSpec, code: str, mode: str, examples: Sequence[str] = (), hint: str = "",
                 scope: str = "architecture") -> str:
    """The instruction text for one baseline (before any chat template).

    ``examples`` are few-shot deltas (of other files) shown before the instruction, each
    as a fenced diff; with none the text is the plain template. ``hint`` (a sentence of
    :func:`cem_nas.sampler.hints.hint_text`) follows the sentence that asks for a change.
    Under ``scope`` architecture the instruction says which parts are fixed.

    >>> msg = user_message(TaskSpec("mnist5k", (1, 28, 28), 10), "x = 1", "delta")
    >>> "(batch, 1, 28, 28)" in msg and "```diff" in msg and "Examples" not in msg and "keep supported" in msg
    True
    >>> "keep supported" in user_message(TaskSpec("m", (1, 2, 2), 3), "x = 1", "delta", scope="file")
    False
    >>> "```diff\\n-a\\n+b\\n```" in user_message(TaskSpec("m", (1, 2, 2), 3), "x = 1", "delta", ["-a\\n+b"])
    True
    >>> "training. Change only X. The training" in user_message(TaskSpec("m", (1, 2, 2), 3), "x = 1", "delta", hint="Change only X.")
    True
    """
    c, h, w = task.in_shape
    head = _TASK.format(dataset=task.dataset, c=c, h=h, w=w, k=task.num_classes, code=_ended(code))
    if examples:
        head += _EXAMPLES + "".join(format_completion("delta", e) + "\n" for e in examples)
    change = _CHANGE[check_scope(scope)]
    if hint:
        first, _, rest = change.partition(". ")
        change = f"{first}. {hint}" + (f" {rest}" if rest else "")
    return head + change + " " + _ANSWER[check_mode(mode)]


def render_prompt(tokenizer, task: TaskSpec, code: str, mode: str, examples: Sequence[str] = (), hint: str = "",
                  scope: str = "architecture") -> str:
    """The full prompt text: the model's chat template when it has one, else a plain frame."""
    message = user_message(task, code, mode, examples, hint, scope)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False
        )
    return message + "\n\nAnswer:\n"


def format_completion(mode: str, body: str) -> str:
    """Wrap a delta (or a whole file) in the fenced block the model is trained to write.

    >>> format_completion("delta", "--- a/net.py\\n+++ b/net.py")
    '```diff\\n--- a/net.py\\n+++ b/net.py\\n```'
    """
    return f"```{_FENCE[check_mode(mode)]}\n{_ended(body)}```"


def closes_block(text: str) -> bool:
    """True once ``text`` holds an opening fence and a later closing fence on its own line.

    >>> closes_block("```diff\\n-a\\n+b\\n```")
    True
    >>> closes_block("```diff\\n-a\\n+b\\n")
    False
    """
    start = text.find("```")
    if start < 0:
        return False
    body_start = text.find("\n", start)
    return body_start >= 0 and "\n```" in text[body_start:]


def cut_after_block(text: str) -> str:
    """Drop whatever the model wrote after the closing fence of its first block."""
    if not closes_block(text):
        return text
    body_start = text.find("\n", text.find("```"))
    end = text.find("\n```", body_start) + len("\n```")
    return text[:end]

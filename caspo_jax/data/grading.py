"""Final answers: extraction from model text and equivalence with a reference answer.

`extract_answer` takes the answer out of a completion (last \\boxed{} / \\fbox{}, then a GSM8K
"#### x" line, then "The answer is x", then the last number). `grade` compares it with a reference:
yes/no references and multiple-choice letters are compared as words/letters, integer references
(AIME, zero-padded or not) as integers when the prediction is a plain integer, and everything else
through math-verify (fractions, decimals, percents, units, intervals, sets, expressions).

math-verify bounds its own time with SIGALRM, which only works in the main thread. We always pass
its timeouts as None and bound time ourselves (`_with_deadline`), so grading works the same from any
thread: a comparison that runs past the deadline grades False, and its worker thread is stopped at
its next Python bytecode. Nothing here raises on bad model output: it grades False.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from typing import Callable, TypeVar

from math_verify import parse, verify
from sympy import Basic, Pow, factorial, preorder_traversal

T = TypeVar("T")


class _OwnDeadlineFilter(logging.Filter):
    """Drops math-verify's warning that its timeouts are off: `_with_deadline` bounds time here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _logger in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger).addFilter(_OwnDeadlineFilter())

DEFAULT_TIMEOUT_S = 5.0
_MAX_EXPONENT = 1e5  # larger numeric powers (10^{10^{10}}) would be expanded in C, beyond any timeout
_MAX_FACTORIAL = 1e4

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|\\boxed +([^\s$]+)")
_GSM8K_RE = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is\b|:)\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_INT_RE = re.compile(r"[+-]?\d+")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+")
_YES_NO_RE = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_LETTER_RE = re.compile(r"\(?([A-J])\)?(?![A-Za-z])")
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} in `text` (balanced braces), or of the
    brace-less form "\\boxed 5"; None when there is none or the last one is unbalanced."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    if last.group(1) is not None:
        return last.group(1)
    depth, start = 1, last.end()
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _clean_tail(answer: str) -> str:
    """Trim an answer cut from running text: first sentence, no markdown bold, $ or final period."""
    answer = re.split(r"\.\s", answer, maxsplit=1)[0].strip()
    return answer.rstrip(".").strip("*$ ").rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, or None when it states none.

    Order: last \\boxed{}/\\fbox{}; last "#### x" line; last "The answer is x"; last number.
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for pattern in (_GSM8K_RE, _ANSWER_IS_RE):
        matches = pattern.findall(text)
        if matches:
            answer = _clean_tail(matches[-1])
            if answer:
                return answer
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _strip_markup(answer: str) -> str:
    """Drop $ delimiters, \\text{}-like wrappers, escaped dollars and LaTeX thin spaces."""
    answer = _TEXT_CMD_RE.sub(r"\1", answer).replace("{,}", ",")
    return answer.replace("\\!", "").replace("\\$", "").replace("$", "").strip()


def as_integer(answer: str) -> int | None:
    """`answer` as an integer when it is a plain integer literal ("009", "-12", "1,000", "$42$",
    "42.0", AoPS's "\\textbf{(073)}"), else None."""
    answer = re.sub(r"^\((.*)\)$", r"\1", _strip_markup(answer))
    if _THOUSANDS_RE.fullmatch(answer):
        answer = answer.replace(",", "")
    answer = re.sub(r"\.0+$", "", answer)
    return int(answer) if _INT_RE.fullmatch(answer) else None


def as_yes_no(answer: str) -> str | None:
    """"yes" or "no" for the first yes/no/true/false word of `answer`, else None."""
    match = _YES_NO_RE.search(_strip_markup(answer))
    if match is None:
        return None
    return "yes" if match.group(1).lower() in ("yes", "true") else "no"


def as_choice(answer: str) -> str | None:
    """The multiple-choice letter A-J that `answer` starts with ("C", "(C)", "\\text{(C)} 42")."""
    match = _LETTER_RE.match(_strip_markup(answer).strip("*").strip())
    return match.group(1) if match else None


def _reference_kind(reference: str) -> str:
    stripped = _strip_markup(reference)
    if stripped.lower() in ("yes", "no", "true", "false"):
        return "yes_no"
    if re.fullmatch(r"\(?[A-J]\)?", stripped):
        return "choice"
    if as_integer(reference) is not None:
        return "integer"
    return "math"


class _DeadlineExceeded(BaseException):
    """Raised inside an abandoned grading thread (BaseException: math-verify catches Exception)."""


def _with_deadline(fn: Callable[[], T], timeout_s: float) -> T | None:
    """fn() in a daemon thread; its result, or None if it raised or ran past `timeout_s` (then the
    thread is interrupted at its next Python bytecode)."""
    result: list[T] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException:  # noqa: BLE001 - any failure (or our interrupt) grades False
            pass

    worker = threading.Thread(target=target, name="caspo-grade", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive() and worker.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(worker.ident), ctypes.py_object(_DeadlineExceeded)
        )
        return None
    return result[0] if result else None


def _oversized(parsed: list) -> bool:
    """Whether a parsed answer holds a numeric power or factorial too large to evaluate: sympy
    would expand it inside one C call that holds the GIL, which no timeout can interrupt."""
    for item in parsed:
        if not isinstance(item, Basic):
            continue
        for node in preorder_traversal(item):
            if isinstance(node, Pow) and node.base.is_number and node.exp.is_number:
                try:
                    if not abs(complex(node.exp)) <= _MAX_EXPONENT:
                        return True
                except (TypeError, ValueError, OverflowError):
                    return True
            elif isinstance(node, factorial) and node.args[0].is_number:
                if not abs(complex(node.args[0])) <= _MAX_FACTORIAL:
                    return True
    return False


def math_equal(prediction: str, reference: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """math-verify equivalence of two bare answers (LaTeX or plain), bounded by `timeout_s`.
    Answers with astronomically large numbers are compared as strings (spaces ignored)."""

    def compare() -> bool:
        gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=None)
        pred = parse(f"\\boxed{{{prediction}}}", parsing_timeout=None)
        if not gold or not pred:
            return False
        if _oversized(gold) or _oversized(pred):
            return "".join(prediction.split()) == "".join(reference.split())
        return verify(gold, pred, timeout_seconds=None)

    return bool(_with_deadline(compare, timeout_s))


def grade_answer(prediction: str, reference: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether an extracted answer equals the reference, with the grader the reference calls for."""
    kind = _reference_kind(reference)
    if kind == "yes_no":
        return as_yes_no(prediction) == as_yes_no(reference)
    if kind == "choice":
        return as_choice(prediction) == as_choice(reference)
    if kind == "integer":
        value = as_integer(prediction)
        if value is not None:
            return value == as_integer(reference)
    return math_equal(prediction, reference, timeout_s)


def grade(model_output: str, reference: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether a completion's final answer matches `reference`. Unparsable output is False.

    For yes/no references a completion without an extractable answer falls back to its last
    yes/no word ("... so yes, it is.").
    """
    try:
        prediction = extract_answer(model_output)
        if _reference_kind(reference) == "yes_no":
            if prediction is None or as_yes_no(prediction) is None:
                words = _YES_NO_RE.findall(model_output)
                prediction = words[-1] if words else None
        if prediction is None or not prediction.strip():
            return False
        return grade_answer(prediction, reference, timeout_s)
    except Exception:  # noqa: BLE001 - grading must never take an evaluation down
        return False

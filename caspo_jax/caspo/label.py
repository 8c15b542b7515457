"""Step labelers behind one interface: which steps of a solution are right.

`label(items) -> list[list[bool]]` takes a batch of `LabelItem`s (question, reference answer, steps)
and returns one label per step. Three labelers:
  verifier  a function that checks one step (the demo's arithmetic world, any checkable domain);
  judge     an LLM judge (any HF causal LM loaded through our model) prompted with the question, the
            reference answer and the numbered steps, asked for the first wrong step; the paper used
            Qwen2.5-Math-7B-Instruct offline. Steps before the first wrong one are right, the rest wrong;
  outcome   every step gets the final answer's grade (for when nothing better exists).
A judge verdict that cannot be parsed labels nothing right-or-wrong by guesswork: the item falls back
to outcome labels and is counted in `JudgeLabeler.malformed`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Protocol, Sequence

from caspo_jax.data import grading


@dataclasses.dataclass(frozen=True)
class LabelItem:
    question: str
    reference: str  # reference final answer
    steps: tuple[str, ...]
    solution: str = ""  # the full text, for outcome grading (default: the steps joined)

    @property
    def text(self) -> str:
        return self.solution or "\n\n".join(self.steps)


class Labeler(Protocol):
    name: str

    def label(self, items: Sequence[LabelItem]) -> list[list[bool]]: ...


@dataclasses.dataclass
class VerifierLabeler:
    """check(question, step_index, step_text) -> bool, applied to every step."""

    check: Callable[[str, int, str], bool]
    name: str = "verifier"

    def label(self, items: Sequence[LabelItem]) -> list[list[bool]]:
        return [[bool(self.check(it.question, k, s)) for k, s in enumerate(it.steps)] for it in items]


@dataclasses.dataclass
class OutcomeLabeler:
    name: str = "outcome"

    def label(self, items: Sequence[LabelItem]) -> list[list[bool]]:
        return [[grading.grade(it.text, it.reference)] * len(it.steps) for it in items]


JUDGE_PROMPT = (
    "You are checking a step-by-step solution to a math problem.\n\n"
    "Problem:\n{question}\n\nReference answer: {reference}\n\nSolution steps:\n{steps}\n\n"
    "Find the first step that contains an error (a wrong calculation, a wrong fact or an unjustified "
    "claim). Reply with exactly one line: 'First wrong step: N' with the step number, or "
    "'First wrong step: none' if every step is correct."
)
_VERDICT = re.compile(r"first\s+(?:wrong|incorrect|erroneous)\s+step\s*(?:is|:)?\s*(?:step\s*)?(\d+|none)", re.I)
_ALL_RIGHT = re.compile(r"\b(?:all|every)\s+(?:the\s+)?steps?\s+(?:are|is)\s+correct\b", re.I)


def judge_prompt(item: LabelItem) -> str:
    numbered = "\n".join(f"Step {k + 1}: {s}" for k, s in enumerate(item.steps))
    return JUDGE_PROMPT.format(question=item.question.strip(), reference=item.reference, steps=numbered)


def parse_verdict(text: str, num_steps: int) -> int | None:
    """The 0-based index of the first wrong step, num_steps when all are right, None if unparsable
    (no verdict, or a step number outside 1..num_steps). The last verdict in the text wins."""
    found = _VERDICT.findall(text)
    if found:
        last = found[-1].lower()
        if last == "none":
            return num_steps
        k = int(last)
        return k - 1 if 1 <= k <= num_steps else None
    return num_steps if _ALL_RIGHT.search(text) else None


def labels_from_verdict(first_wrong: int, num_steps: int) -> list[bool]:
    return [k < first_wrong for k in range(num_steps)]


@dataclasses.dataclass
class JudgeLabeler:
    """An LLM judge run through our sampler (greedy, batched)."""

    sampler: object  # caspo_jax.infer.sampler.Sampler with a tokenizer
    max_new_tokens: int = 64
    chat: bool | None = None  # None: the chat template when the judge's tokenizer has one
    name: str = "judge"
    malformed: int = 0

    def label(self, items: Sequence[LabelItem]) -> list[list[bool]]:
        from caspo_jax.infer.sampler import SamplingConfig
        from caspo_jax.model import tokenizer as tokenizer_lib

        tok = self.sampler.tokenizer
        chat = tokenizer_lib.has_chat_template(tok) if self.chat is None else self.chat
        texts = [tokenizer_lib.format_prompt(tok, judge_prompt(it), chat) for it in items]
        sampling = SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=0.0, step_delimiter=None, signals=False)
        replies = self.sampler.texts(self.sampler.generate(tokenizer_lib.encode(tok, texts), sampling))
        out = []
        for item, reply in zip(items, replies):
            first_wrong = parse_verdict(reply, len(item.steps))
            if first_wrong is None:
                self.malformed += 1
                out.extend(OutcomeLabeler().label([item]))
            else:
                out.append(labels_from_verdict(first_wrong, len(item.steps)))
        return out


def load_judge(path: str, *, dtype: str | None = None, mesh=None, max_new_tokens: int = 64) -> JudgeLabeler:
    """A JudgeLabeler for the HF model folder at `path`; errors say the judge could not be loaded."""
    from caspo_jax.infer.sampler import Sampler
    from caspo_jax.model import hf
    from caspo_jax.model import tokenizer as tokenizer_lib

    try:
        config, params = hf.load(path, dtype=dtype, mesh=mesh)
        tok = tokenizer_lib.load_tokenizer(path)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"judge model {path} could not be loaded: {e}") from None
    return JudgeLabeler(Sampler(config, params, tok, mesh=mesh), max_new_tokens=max_new_tokens)

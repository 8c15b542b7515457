"""Prompts: how a question is put to the model.

Chat models get their own chat template (`tokenizer.apply_chat_template`, generation prompt added);
base models get a plain chain-of-thought prompt. Both ask for steps separated by blank lines (the
default step delimiter of the confidence and labelling code) and a final \\boxed{} answer (what
`grading.extract_answer` looks for first).
"""

from __future__ import annotations

from typing import Any

INSTRUCTION = (
    "Please reason step by step, separating the steps with a blank line, "
    "and put your final answer within \\boxed{}."
)


def plain_prompt(question: str, instruction: str = INSTRUCTION) -> str:
    """A chain-of-thought prompt for base models; the completion starts with the first step."""
    return f"Problem:\n{question.strip()}\n\n{instruction}\n\nSolution:\n"


def chat_prompt(
    question: str, tokenizer: Any, instruction: str = INSTRUCTION, system: str | None = None
) -> str:
    """The question as one user turn in the tokenizer's chat template, ready for generation."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"{question.strip()}\n\n{instruction}"})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def build_prompt(
    question: str, tokenizer: Any = None, instruction: str = INSTRUCTION, system: str | None = None
) -> str:
    """`chat_prompt` when `tokenizer` has a chat template, else `plain_prompt` (`system` unused)."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return chat_prompt(question, tokenizer, instruction, system)
    return plain_prompt(question, instruction)

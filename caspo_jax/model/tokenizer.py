"""Tokenizers: loading a Hugging Face tokenizer from a local folder (or hub id), prompts to ids.

Decoding pads on the left (every row appends at the same cache slot), so loaded tokenizers get
`padding_side='left'` and a pad token (EOS when the tokenizer has none).
"""

from __future__ import annotations

from pathlib import Path

import transformers


def load_tokenizer(path: str | Path) -> transformers.PreTrainedTokenizerBase:
    """AutoTokenizer from a folder; errors name the folder and what was expected."""
    folder = Path(path)
    if folder.exists() and not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise FileNotFoundError(f"{folder}: no tokenizer files (expected tokenizer.json or tokenizer_config.json)")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: could not load a tokenizer ({e})") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{path}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def has_chat_template(tokenizer: transformers.PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: transformers.PreTrainedTokenizerBase, text: str, chat: bool) -> str:
    """The prompt string: the chat template with a generation prompt when `chat`, else `text`."""
    if not chat:
        return text
    if not has_chat_template(tokenizer):
        raise ValueError("chat=True but the tokenizer has no chat template")
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode(tokenizer: transformers.PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text as is (the template, if any, already carries the special tokens)."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

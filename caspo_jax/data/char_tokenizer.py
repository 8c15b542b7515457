"""A character-level tokenizer in Hugging Face format, built offline (the arith demo's tiny model).

Ids 0..2 are <pad>, <s>, </s>; then every printable ASCII character and "\\n", one token each, so
the step delimiter "\\n\\n" is two tokens and token pieces concatenate to the decoded text exactly.
"""

from __future__ import annotations

from pathlib import Path

import transformers

SPECIALS = ("<pad>", "<s>", "</s>")
CHARS = tuple(chr(c) for c in range(32, 127)) + ("\n",)
VOCAB_SIZE = len(SPECIALS) + len(CHARS)


def save_char_tokenizer(path: str | Path, chat_template: str | None = None) -> Path:
    """Writes the tokenizer's files (tokenizer.json, tokenizer_config.json, ...) into `path`.

    chat_template: an optional Jinja template saved with it (then `data.prompts.build_prompt` uses it).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return Path(path)

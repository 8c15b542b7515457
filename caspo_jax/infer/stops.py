"""Finding strings (stop strings, the step delimiter) in generated text, on device, token by token.

The generated text is the concatenation of each new token's own decoded text, its "piece" (special
tokens have empty pieces; a token holding part of a UTF-8 character decodes to U+FFFD). A string is
found at a token when one of its occurrences ends inside the characters that token added, so a string
split over several tokens is found at the token that completes it. A token such as "\\n\\nStep"
completes "\\n\\n" with characters to spare: it is where that step ends (it belongs to the step it
ends), and `advance` reports the offset inside its piece where the string ends, so callers can tell
how many characters belong to what follows. Only generated text is searched, never the prompt.

Matching works on code points with tables sized by the longest string, not the longest token. With
P = (longest string length) - 1, a match ending at offset j of a piece either starts inside the piece
(precomputed per token: `inner`) or ends within its first P characters (found on device in the last P
generated characters followed by the piece's first P). The last P characters are carried per row.
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

NOTHING = -1  # a character slot before the start of the text, or past the end of a piece
ANY = -2  # left padding of the strings' table: matches every character
NOT_FOUND = np.iinfo(np.int32).max


@flax.struct.dataclass
class StopTable:
    """Tables for finding S strings in the text of a vocabulary of V tokens. P = longest string - 1."""

    strings: Array  # [S, P + 1] int32 code points, right-aligned, ANY on the left
    head: Array  # [V, P] int32 first P characters of each piece, NOTHING past its end
    tail: Array  # [V, P] int32 last P characters of each piece, right-aligned, NOTHING before its start
    length: Array  # [V] int32 characters in each piece
    inner: Array  # [V, S] int32 offset in the piece where string s first ends wholly inside it, or NOT_FOUND

    @property
    def width(self) -> int:
        """P: how many trailing characters each row carries."""
        return self.head.shape[1]


def token_pieces(tokenizer, vocab_size: int) -> list[str]:
    """Each token id's own decoded text; ids the tokenizer lacks (padded vocabularies) decode to ''."""
    known = min(len(tokenizer), vocab_size)
    pieces = tokenizer.batch_decode(
        [[i] for i in range(known)], skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return list(pieces) + [""] * (vocab_size - known)


def build_table(pieces: Sequence[str], strings: Sequence[str]) -> StopTable:
    """Tables for `strings` over a vocabulary whose token i decodes to pieces[i] (host side, once).

    Raises ValueError for an empty string or one with a character that no token can produce."""
    if not strings:
        raise ValueError("build_table needs at least one string to find")
    alphabet = set().union(*map(set, pieces))
    for s in strings:
        if not s:
            raise ValueError("stop strings must be non-empty")
        missing = [c for c in s if c not in alphabet]
        if missing:
            raise ValueError(f"stop string {s!r} can never be generated: no token produces {missing[0]!r}")
    width = max(1, max(len(s) for s in strings) - 1)
    table = np.full((len(strings), width + 1), ANY, np.int32)
    for i, s in enumerate(strings):
        table[i, width + 1 - len(s) :] = [ord(c) for c in s]
    head = np.full((len(pieces), width), NOTHING, np.int32)
    tail = np.full((len(pieces), width), NOTHING, np.int32)
    inner = np.full((len(pieces), len(strings)), NOT_FOUND, np.int32)
    for t, piece in enumerate(pieces):
        if not piece:
            continue
        codes = [ord(c) for c in piece]
        head[t, : min(width, len(codes))] = codes[:width]
        last = codes[-width:]
        tail[t, width - len(last) :] = last
        for i, s in enumerate(strings):
            start = piece.find(s)
            if start >= 0:
                inner[t, i] = start + len(s) - 1
    length = np.asarray([len(p) for p in pieces], np.int32)
    return StopTable(jnp.asarray(table), jnp.asarray(head), jnp.asarray(tail), jnp.asarray(length), jnp.asarray(inner))


def start(table: StopTable, batch: int) -> Array:
    """The carried characters of rows that have generated nothing yet: [B, P] int32."""
    return jnp.full((batch, table.width), NOTHING, jnp.int32)


def advance(table: StopTable, recent: Array, tokens: Array) -> tuple[Array, Array]:
    """Appends one token per row. recent: [B, P] int32 last characters; tokens: [B] int32.

    Returns (recent after the token [B, P], end [B, S] int32): for each string, the offset within the
    token's piece where its first occurrence completed by this token ends, or NOT_FOUND.
    """
    width = table.width
    length = table.length[tokens][:, None]  # [B, 1]
    text = jnp.concatenate([recent, table.head[tokens]], axis=-1)  # [B, 2P]: the old tail, then the piece
    # Window j holds the P + 1 characters ending at the piece's offset j (j < P).
    windows = text[:, np.arange(width)[:, None] + np.arange(width + 1)[None, :]]  # [B, P, P + 1]
    pattern = table.strings[None, :, None, :]  # [1, S, 1, P + 1]
    hit = jnp.all((windows[:, None] == pattern) | (pattern == ANY), axis=-1)  # [B, S, P]
    offsets = jnp.arange(width, dtype=jnp.int32)
    hit &= (offsets < length)[:, None, :]
    end = jnp.minimum(jnp.min(jnp.where(hit, offsets, NOT_FOUND), axis=-1), table.inner[tokens])
    shifted = jnp.take_along_axis(text, jnp.minimum(length, width) + offsets[None, :], axis=-1)
    recent = jnp.where(length >= width, table.tail[tokens], shifted)
    return recent, end

"""The rules of a final answer that the reply grammar leaves to the decoder.

The grammar (:mod:`vitron.planners.grammar`) lets an answer's text run on (``char*``), because a
bounded repetition there makes the grammar engine's mask cost about a second a token. These rules
hold it instead, on top of the grammar's mask, for either engine (transformers + xgrammar,
llama.cpp + GBNF):

- **length**: after ``max_answer`` tokens of the answer's text only a token that closes it (its
  bytes start with ``"``) may come, so every reply ends within :attr:`PlannerGrammar.max_tokens`;
- **no repeated phrase**: inside the answer's text a token that would complete an n-gram of
  tokens already written there is banned (``no_repeat`` = n; 0: off). Small models loop ("The
  bird was painted red. The bird was painted red. ..."): the phrase cannot come back, and the
  model writes something else or closes the answer. A token that closes the answer is never
  banned, so the grammar's mask and these bans always leave one token.

Calls are untouched: their texts are bounded by the grammar (a bounded repetition of one
character class, which costs the engines nothing), and JSON keys repeat by design.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common_kernels.runtime.errors import InvalidValue
from vitron.planners.grammar import ANSWER_HEAD

HEAD = ANSWER_HEAD.encode("utf-8")
QUOTE = b'"'
BACKSLASH = ord("\\")
ESCAPED = b'"\\/nt'  # what may follow a backslash in an answer (the grammar's escapes)


def check_no_repeat(no_repeat: int) -> None:
    """``no_repeat`` is 0 (off) or an integer >= 2 (an n-gram of one token would ban every
    token already written)."""
    if type(no_repeat) is not int or no_repeat < 0 or no_repeat == 1:
        raise InvalidValue(
            "no_repeat", f"{{no_repeat}} must be 0 (off) or an integer >= 2, got {no_repeat!r}"
        )


class AnswerVocab:
    """What the answer rules need to know of a vocabulary, computed once per tokenizer.

    Args:
        pieces: each token's bytes, indexed by token id (``b""`` for a token without text).

    Attributes:
        closers: the tokens whose bytes start with ``"`` (they end the text unless it ends in an
            unfinished escape or character).
        finishers: for an unfinished end of the text (``"escape"``, or ``1``..``3`` UTF-8
            continuation bytes missing), the tokens that finish it and may then end the text:
            what the length rule allows there.
        outside: for :attr:`closers` and each of :attr:`finishers`, a boolean array over the
            vocabulary, True where a token is not in it (what a mask sets to -inf).
    """

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self.pieces = list(pieces)
        self.closers = frozenset(i for i, piece in enumerate(self.pieces) if piece[:1] == QUOTE)
        escape = (
            i
            for i, piece in enumerate(self.pieces)
            if piece[:1] and piece[0] in ESCAPED and piece[1:2] in (b"", QUOTE)
        )
        self.finishers = {
            "escape": frozenset(escape),
            **{need: _continuing(self.pieces, need) for need in (1, 2, 3)},
        }
        self.outside = {}
        for only in (self.closers, *self.finishers.values()):
            self.outside[only] = np.ones(len(self.pieces), dtype=bool)
            self.outside[only][sorted(only)] = False


class AnswerRules:
    """The answer's length and no-repeat rules over one reply, token by token.

    Args:
        vocab: the tokenizer's :class:`AnswerVocab`.
        max_answer: tokens of the answer's text, >= 1.
        no_repeat: n of the no-repeat n-gram rule inside the answer's text, 0 (off) or >= 2.
    """

    def __init__(self, vocab: AnswerVocab, max_answer: int, no_repeat: int = 4) -> None:
        if type(max_answer) is not int or max_answer < 1:
            raise InvalidValue("max_answer", f"{{max_answer}} must be >= 1, got {max_answer!r}")
        check_no_repeat(no_repeat)
        self.vocab = vocab
        self.max_answer = max_answer
        self.no_repeat = no_repeat
        self.reply = b""
        self.text: list[int] = []  # the tokens that wrote the answer's text
        self.escape = False  # the text ends in a backslash whose escape is unfinished
        self.missing = 0  # UTF-8 continuation bytes the text's last character still needs
        self.closed = False

    @property
    def inside(self) -> bool:
        """Whether the next token continues an answer's text."""
        return len(self.reply) >= len(HEAD) and self.reply.startswith(HEAD) and not self.closed

    def accept(self, token: int) -> None:
        """Advance by a token the grammar accepted."""
        start = len(self.reply)
        self.reply += self.vocab.pieces[token]
        if self.closed or len(self.reply) <= len(HEAD) or not self.reply.startswith(HEAD):
            return
        wrote = False
        for byte in self.reply[max(start, len(HEAD)) :]:  # what the token wrote after the head
            if self.missing:
                self.missing -= 1
            elif self.escape or byte == BACKSLASH:
                self.escape = not self.escape
            elif byte == QUOTE[0]:
                self.closed = True
                break
            else:  # a character's first byte: 0xxxxxxx, 110xxxxx, 1110xxxx or 11110xxx
                self.missing = (byte >= 0xC0) + (byte >= 0xE0) + (byte >= 0xF0)
            wrote = True
        if wrote:
            self.text.append(token)

    def must_close(self) -> frozenset[int] | None:
        """The only tokens that may come next when the answer's text is at its length: the
        :attr:`AnswerVocab.closers`, or after an unfinished escape or character its
        :attr:`AnswerVocab.finishers`; None before."""
        if not self.inside or len(self.text) < self.max_answer:
            return None
        if self.escape or self.missing:
            return self.vocab.finishers["escape" if self.escape else self.missing]
        return self.vocab.closers

    def banned(self) -> list[int]:
        """The tokens that would repeat an n-gram of the answer's text (never one that closes
        it; none inside an escape or a character)."""
        n = self.no_repeat
        if not n or not self.inside or self.escape or self.missing or len(self.text) < n - 1:
            return []
        text, tail = self.text, tuple(self.text[len(self.text) - n + 1 :])
        found = {
            text[i + n - 1] for i in range(len(text) - n + 1) if tuple(text[i : i + n - 1]) == tail
        }
        return sorted(found - self.vocab.closers)


def _continuing(vocab: Sequence[bytes], need: int) -> frozenset[int]:
    """The tokens that go on with a character missing ``need`` continuation bytes and may then
    end the text: at most ``need`` continuation bytes, or exactly ``need`` and then ``"``."""
    found = set()
    for i, piece in enumerate(vocab):
        body = piece[:need]
        continues = body and all(0x80 <= b < 0xC0 for b in body)
        if continues and (len(piece) <= need or piece[need : need + 1] == QUOTE):
            found.add(i)
    return frozenset(found)

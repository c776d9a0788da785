"""Structure-aware chunking.

Blocks (paragraphs, lists, code) are packed into chunks within one section, measured in the embedding
model's own tokens. A chunk closes as soon as it holds a third of the budget, when the next block would
overflow it, or at a heading. Boundaries therefore depend only on the blocks next to them: an edit
changes the chunk it lands in and at most its neighbour, never every chunk after it, so a one-paragraph
edit re-embeds one or two chunks. A block longer than the budget is cut into token windows with overlap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from syncd.models import Block, Chunk

CHUNKER_VERSION = "1"
_WINDOW_MARGIN = 4
_TOKENISE_SLICE = 64
_HEADING_PREFIX_TOKENS = 32


class TokenCounter(Protocol):
    """The embedding model's tokenizer, as the chunker needs it."""

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text, without special tokens."""

    def offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character span of every token of each text, without special tokens."""


class HFTokenCounter:
    """TokenCounter over a Hugging Face ``tokenizers`` tokenizer.json (fast, no torch import)."""

    def __init__(self, tokenizer_json: str) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(tokenizer_json)
        self._tok.no_truncation()
        self._tok.no_padding()

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(o) for o in self.offsets(texts)]

    def offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        if not texts:
            return []
        return [e.offsets for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]


def windows(offsets: Sequence[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int, int]]:
    """(first char, end char, tokens) of consecutive windows of ``size`` tokens overlapping by ``overlap``."""
    step = max(1, size - overlap)
    spans = []
    for start in range(0, len(offsets), step):
        window = offsets[start:start + size]
        spans.append((window[0][0], window[-1][1], len(window)))
        if start + size >= len(offsets):
            break
    return spans


def content_hash(embed_text: str, model_id: str) -> str:
    """Identity of a chunk's vector: the text that is embedded plus the model that embeds it."""
    return hashlib.blake2b(f"{model_id}\x00{embed_text}".encode(), digest_size=16).hexdigest()


def embed_input(text: str, heading_path: Sequence[str]) -> str:
    """The text the model sees: the heading path gives a paragraph its context."""
    if not heading_path:
        return text
    return " > ".join(heading_path) + "\n\n" + text


@dataclass(frozen=True, slots=True)
class _Piece:
    text: str
    heading_path: tuple[str, ...]
    start_line: int
    end_line: int
    tokens: int


class Chunker:
    """Turns blocks into chunks of at most ``max_tokens`` model tokens (special tokens included)."""

    def __init__(self, counter: TokenCounter, *, max_tokens: int, overlap_tokens: int, model_id: str) -> None:
        self.counter = counter
        self.max_tokens = max_tokens
        self.overlap_tokens = min(overlap_tokens, max_tokens // 4)
        self.model_id = model_id
        # Room for [CLS]/[SEP] and the heading prefix that embed_input() adds.
        self.budget = max(8, max_tokens - 2 - min(_HEADING_PREFIX_TOKENS, max_tokens // 4))
        # A chunk closes as soon as it holds this many tokens: most paragraphs are a chunk of their own and
        # only short ones are merged, so an edit re-chunks its own paragraph and at most its neighbour.
        self.min_tokens = max(1, self.budget // 3)

    def _pieces(self, blocks: Sequence[Block]) -> list[_Piece]:
        # Every block is tokenised once, in one batch; long blocks are cut at token boundaries from the same
        # offsets. A window re-tokenised on its own can differ by a token at its edges: the margin absorbs it.
        size = max(4, self.budget - _WINDOW_MARGIN)
        pieces: list[_Piece] = []
        for block, offsets in self._tokenised(blocks):
            if len(offsets) <= self.budget:
                pieces.append(_Piece(block.text, block.heading_path, block.start_line, block.end_line, len(offsets)))
                continue
            line = block.start_line
            counted = 0
            for start, end, tokens in windows(offsets, size, self.overlap_tokens):
                text = block.text[start:end]
                line += block.text.count("\n", counted, start)
                counted = start
                last = line + text.count("\n")
                pieces.append(_Piece(text, block.heading_path, line, min(last, block.end_line), tokens))
        return pieces

    def _tokenised(self, blocks: Sequence[Block]) -> Iterator[tuple[Block, list[tuple[int, int]]]]:
        """Each block with its token offsets, tokenised in slices so a huge document stays in bounded memory."""
        for start in range(0, len(blocks), _TOKENISE_SLICE):
            part = blocks[start:start + _TOKENISE_SLICE]
            yield from zip(part, self.counter.offsets([b.text for b in part]), strict=True)

    def chunk(self, blocks: Sequence[Block]) -> list[Chunk]:
        groups: list[list[_Piece]] = []
        current: list[_Piece] = []
        used = 0
        for piece in self._pieces(blocks):
            if current and (piece.heading_path != current[-1].heading_path or used + piece.tokens + 1 > self.budget):
                groups.append(current)
                current, used = [], 0
            current.append(piece)
            used += piece.tokens + (1 if len(current) > 1 else 0)
            if used >= self.min_tokens:
                groups.append(current)
                current, used = [], 0
        if current:
            groups.append(current)
        chunks = []
        for index, group in enumerate(groups):
            text = "\n\n".join(p.text for p in group)
            path = group[0].heading_path
            chunks.append(Chunk(
                text=text, index=index, heading_path=path,
                start_line=group[0].start_line, end_line=max(p.end_line for p in group),
                content_hash=content_hash(embed_input(text, path), self.model_id),
            ))
        return chunks


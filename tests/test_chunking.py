"""Chunking: token caps measured with the model's tokenizer, heading paths, line spans, local edits."""

from __future__ import annotations

import random

from syncd.chunking import Chunker, HFTokenCounter
from syncd.embedding import resolve_model_path
from syncd.extract import extract
from tests.corpus import markdown_doc, paragraph


def make_chunker(max_tokens: int = 256, overlap: int = 32) -> Chunker:
    counter = HFTokenCounter(str(resolve_model_path("all-MiniLM-L6-v2") / "tokenizer.json"))
    return Chunker(counter, max_tokens=max_tokens, overlap_tokens=overlap, model_id="m")


def chunks_of(text: str, chunker: Chunker | None = None):
    chunker = chunker or make_chunker()
    return chunker.chunk(extract(text.encode(), "markdown").blocks)


def test_every_chunk_fits_the_model_window_counted_by_its_own_tokenizer():
    chunker = make_chunker()
    long_para = " ".join(paragraph(random.Random(i)) for i in range(30))  # one paragraph of ~2,000 tokens
    chunks = chunks_of(f"# T\n\n{long_para}\n\n" + markdown_doc(1), chunker)
    counts = chunker.counter.count([c.text for c in chunks])
    assert max(counts) <= chunker.budget
    assert len([c for c in chunks if c.start_line == 3]) >= 2  # the long paragraph was split


def test_split_long_block_overlaps_between_windows():
    chunker = make_chunker(max_tokens=64, overlap=16)
    words = [f"w{i}" for i in range(400)]
    chunks = chunker.chunk(extract(" ".join(words).encode(), "text").blocks)
    assert len(chunks) > 2
    first, second = chunks[0].text.split(), chunks[1].text.split()
    assert set(first) & set(second), "consecutive windows share their overlap"


def test_heading_path_and_line_span_point_at_the_source():
    text = "# Title\n\nintro para\n\n## Install\n\nrun the installer\nthen reboot\n\n### Linux\n\napt-get it\n"
    chunks = chunks_of(text)
    lines = text.splitlines()
    by_text = {c.text: c for c in chunks}
    for c in chunks:
        span = "\n".join(lines[c.start_line - 1:c.end_line])
        for part in c.text.split("\n\n"):
            assert part in span
    linux = next(c for c in chunks if "apt-get" in c.text)
    assert linux.heading_path == ("Title", "Install", "Linux")
    assert by_text and any(c.heading_path == ("Title",) for c in chunks)


def test_one_paragraph_edit_changes_at_most_two_chunks_in_a_long_document():
    doc = markdown_doc(7, sections=14, paras=6)
    before = chunks_of(doc)
    assert len(before) >= 40
    paragraphs = [p for p in doc.split("\n\n") if p and not p.startswith(("#", "-", "```"))]
    changed_counts = []
    for target in paragraphs:
        edited = doc.replace(target, target + " An extra sentence about the failover drill.", 1)
        after = chunks_of(edited)
        new_hashes = {c.content_hash for c in after} - {c.content_hash for c in before}
        changed_counts.append(len(new_hashes))
    assert changed_counts and max(changed_counts) <= 2 and min(changed_counts) >= 1


def test_content_hash_depends_on_model_id():
    a = Chunker(make_chunker().counter, max_tokens=256, overlap_tokens=32, model_id="a").chunk(
        extract(b"hello world", "text").blocks)
    b = Chunker(make_chunker().counter, max_tokens=256, overlap_tokens=32, model_id="b").chunk(
        extract(b"hello world", "text").blocks)
    assert a[0].text == b[0].text and a[0].content_hash != b[0].content_hash

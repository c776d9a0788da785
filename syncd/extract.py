"""Text extraction: raw document bytes to structural blocks (paragraphs with heading paths and line spans).

Each type uses a well-kept parser: markdown-it-py for Markdown, docutils for reStructuredText,
BeautifulSoup for HTML, pypdf for PDF and mwparserfromhell for MediaWiki wikitext. Line numbers are
1-based and point into the source text (for PDF: into the extracted text, with the page in the heading
path). Every failure is a DocumentSkipped with a short reason code.
"""

from __future__ import annotations

import codecs
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from syncd.errors import DocumentSkipped
from syncd.models import Block

MEDIA_TYPES = {
    ".md": "markdown", ".markdown": "markdown", ".mdown": "markdown", ".mkd": "markdown",
    ".txt": "text", ".text": "text", ".log": "text",
    ".rst": "rst", ".rest": "rst",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".pdf": "pdf",
    ".wiki": "wikitext", ".mediawiki": "wikitext",
}

_BINARY_SNIFF = 8192


@dataclass(frozen=True, kw_only=True, slots=True)
class Extracted:
    title: str
    blocks: list[Block]


def media_type_for(path: str) -> str | None:
    """The extractor type for a file name, or None when syncd does not read that type."""
    return MEDIA_TYPES.get(os.path.splitext(path)[1].lower())  # as PurePosixPath.suffix, without a Path


def decode_text(content: bytes) -> str:
    """Decode text: UTF-8 (with or without BOM) or UTF-16/32 with a BOM. Raises DocumentSkipped."""
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if content.startswith(bom):
            try:
                return content.decode(encoding)
            except UnicodeDecodeError as exc:
                raise DocumentSkipped("undecodable", detail=f"invalid {encoding} at byte {exc.start}") from None
    if b"\x00" in content[:_BINARY_SNIFF]:
        raise DocumentSkipped("binary", detail="NUL byte in the first 8 KiB")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentSkipped("undecodable", detail=f"not valid UTF-8 (byte {exc.start})") from None


def _paragraphs(lines: list[str], skip: set[int], heading_at: dict[int, tuple[str, ...]],
                initial: tuple[str, ...] = ()) -> list[Block]:
    """Blank-line separated paragraphs of ``lines``; ``heading_at`` maps a 0-based line to the heading
    path that starts there; lines in ``skip`` (heading lines) belong to no paragraph."""
    blocks: list[Block] = []
    path = initial
    start: int | None = None
    for i, line in enumerate([*lines, ""]):
        if i in heading_at:
            path_next = heading_at[i]
        else:
            path_next = None
        blank = i >= len(lines) or not line.strip() or i in skip
        if blank and start is not None:
            text = "\n".join(lines[start:i]).strip("\n")
            if text.strip():
                blocks.append(Block(text=text, heading_path=path, start_line=start + 1, end_line=i))
            start = None
        if path_next is not None:
            path = path_next
        if not blank and start is None:
            start = i
    return blocks


def _extract_text(text: str) -> list[Block]:
    return _paragraphs(text.split("\n"), set(), {})


def _extract_markdown(text: str) -> tuple[str, list[Block]]:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(text)
    lines = text.split("\n")
    stack: list[tuple[int, str]] = []
    title = ""
    blocks: list[Block] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == "heading_open" and tok.level == 0:
            level = int(tok.tag[1:])
            heading = tokens[i + 1].content.strip() if i + 1 < len(tokens) else ""
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, heading))
            if not title and level == 1:
                title = heading
            i += 3
            continue
        if tok.level == 0 and tok.map is not None and tok.nesting in (0, 1):
            start, end = tok.map
            body = "\n".join(lines[start:end]).strip("\n")
            if body.strip():
                blocks.append(Block(text=body, heading_path=tuple(h for _, h in stack),
                                    start_line=start + 1, end_line=max(start + 1, end)))
        i += 1
    return title, blocks


def _extract_rst(text: str) -> tuple[str, list[Block]]:
    from docutils import nodes
    from docutils.core import publish_doctree

    # No file inclusion or raw passthrough: the source is untrusted.
    settings = {"report_level": 5, "halt_level": 5, "file_insertion_enabled": False, "raw_enabled": False,
                "warning_stream": io.StringIO()}
    try:
        doctree = publish_doctree(text, settings_overrides=settings)
    except Exception as exc:  # noqa: BLE001 - docutils raises many unrelated types on bad markup
        raise DocumentSkipped("unparseable", detail=f"reStructuredText: {exc}") from None
    lines = text.split("\n")
    markers: list[tuple[int, int, str]] = []
    for title_node in doctree.findall(nodes.title):
        if title_node.line is None:
            continue
        depth = sum(1 for a in _ancestors(title_node) if isinstance(a, nodes.section))
        markers.append((title_node.line - 1, depth, title_node.astext()))
    title = doctree.get("title", "") or (markers[0][2] if markers else "")
    skip: set[int] = set()
    heading_at: dict[int, tuple[str, ...]] = {}
    path: list[str] = []
    for underline, depth, heading in sorted(markers):
        del path[depth:]
        path.append(heading)
        title_line = underline - 1
        for j in (title_line - 1, title_line, underline):
            if 0 <= j < len(lines) and (j != title_line - 1 or _is_adornment(lines[j])):
                skip.add(j)
        heading_at[max(title_line, 0)] = tuple(path)
    return title, _paragraphs(lines, skip, heading_at)


def _ancestors(node: object) -> Iterable[object]:
    parent = getattr(node, "parent", None)
    while parent is not None:
        yield parent
        parent = getattr(parent, "parent", None)


def _is_adornment(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= 2 and len(set(stripped)) == 1 and not stripped[0].isalnum()


_HTML_BLOCKS = ["p", "li", "pre", "blockquote", "td", "th", "dt", "dd", "figcaption", "caption"]
_HTML_HEADINGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
_BR = "\ue000"


def _extract_html(text: str) -> tuple[str, list[Block]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "iframe", "object", "svg"]):
        tag.decompose()
    for br in soup("br"):
        # A private-use mark, so a tag's source still counts only the newlines it really has.
        br.replace_with(_BR)
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    stack: list[tuple[int, str]] = []
    blocks: list[Block] = []
    root = soup.body or soup
    for tag in root.find_all(_HTML_HEADINGS + _HTML_BLOCKS):
        if tag.find_parent(_HTML_BLOCKS) is not None:
            continue  # nested inside a block that is already taken whole
        line = tag.sourceline or 1
        body = tag.get_text().replace(_BR, "\n")
        body = body if tag.name == "pre" else re.sub(r"\s+", " ", body).strip()
        if tag.name in _HTML_HEADINGS:
            level = int(tag.name[1])
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, body))
            if not title and level == 1:
                title = body
            continue
        if body.strip():
            end = line + str(tag).count("\n")
            blocks.append(Block(text=body, heading_path=tuple(h for _, h in stack), start_line=line, end_line=end))
    if not blocks:
        body = re.sub(r"[ \t]+", " ", root.get_text("\n", strip=True))
        blocks = _extract_text(body)
    return title, blocks


def _extract_pdf(content: bytes) -> list[Block]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(content))
        if reader.is_encrypted:
            try:
                reader.decrypt("")
                reader.pages[0].extract_text()
            except (FileNotDecryptedError, PdfReadError, NotImplementedError):
                raise DocumentSkipped("encrypted", detail="PDF is password-protected") from None
        blocks: list[Block] = []
        offset = 0
        for number, page in enumerate(reader.pages, start=1):
            page_text = page.extract_text() or ""
            page_lines = page_text.split("\n")
            for block in _paragraphs(page_lines, set(), {}, initial=(f"page {number}",)):
                blocks.append(Block(text=block.text, heading_path=block.heading_path,
                                    start_line=block.start_line + offset, end_line=block.end_line + offset))
            offset += len(page_lines)
        return blocks
    except DocumentSkipped:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types on a corrupt file
        raise DocumentSkipped("corrupt", detail=f"PDF could not be read: {type(exc).__name__}") from None


def _extract_wikitext(text: str) -> tuple[str, list[Block]]:
    import mwparserfromhell

    lines = text.split("\n")
    heading_at: dict[int, tuple[str, ...]] = {}
    skip: set[int] = set()
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        match = re.match(r"^(={1,6})\s*(.+?)\s*\1\s*$", line)
        if match:
            level = len(match.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, mwparserfromhell.parse(match.group(2)).strip_code().strip()))
            heading_at[i] = tuple(h for _, h in stack)
            skip.add(i)
    blocks = []
    for block in _paragraphs(lines, skip, heading_at):
        plain = mwparserfromhell.parse(block.text).strip_code(normalize=True, collapse=True).strip()
        if plain:
            blocks.append(Block(text=plain, heading_path=block.heading_path,
                                start_line=block.start_line, end_line=block.end_line))
    return "", blocks


_MAX_BLOCK_CHARS = 8000
"""Blocks longer than this are cut at line boundaries (a very long line by characters) before chunking,
so a 10 MB code block or a 2 MB line costs time and memory in proportion to its size, not its square."""


def _bounded(blocks: list[Block]) -> list[Block]:
    out: list[Block] = []
    for block in blocks:
        out.extend(_split_block(block) if len(block.text) > _MAX_BLOCK_CHARS else [block])
    return out


def _split_block(block: Block) -> list[Block]:
    """``block`` cut into pieces of at most _MAX_BLOCK_CHARS, at line boundaries where it can be."""
    out: list[Block] = []
    piece: list[str] = []
    size = 0
    first = line_no = block.start_line

    def flush(end: int) -> None:
        nonlocal piece, size
        text = "\n".join(piece)
        if text.strip():
            out.append(Block(text=text, heading_path=block.heading_path, start_line=first,
                             end_line=min(max(end, first), max(block.end_line, first))))
        piece, size = [], 0

    for line in block.text.split("\n"):
        while len(line) > _MAX_BLOCK_CHARS:
            if piece:
                flush(line_no - 1)
            first = line_no
            piece = [line[:_MAX_BLOCK_CHARS]]
            flush(line_no)
            line = line[_MAX_BLOCK_CHARS:]
        if piece and size + len(line) + 1 > _MAX_BLOCK_CHARS:
            flush(line_no - 1)
        if not piece:
            first = line_no
        piece.append(line)
        size += len(line) + 1
        line_no += 1
    if piece:
        flush(line_no - 1)
    return out


def extract(content: bytes, media_type: str, *, size_limit: int | None = None) -> Extracted:
    """Blocks of a document; raises DocumentSkipped (empty, binary, undecodable, too-large, corrupt...)."""
    if size_limit is not None and len(content) > size_limit:
        raise DocumentSkipped("too-large", detail=f"{len(content)} bytes > {media_type} limit {size_limit}")
    if not content.strip():
        raise DocumentSkipped("empty", detail="no content")
    title = ""
    if media_type == "pdf":
        blocks = _extract_pdf(content)
    else:
        text = decode_text(content).replace("\r\n", "\n").replace("\r", "\n")
        if media_type == "markdown":
            title, blocks = _extract_markdown(text)
        elif media_type == "rst":
            title, blocks = _extract_rst(text)
        elif media_type == "html":
            title, blocks = _extract_html(text)
        elif media_type == "wikitext":
            title, blocks = _extract_wikitext(text)
        elif media_type == "text":
            blocks = _extract_text(text)
        else:
            raise DocumentSkipped("unsupported-type", detail=f"no extractor for {media_type!r}")
    blocks = _bounded(blocks)
    if not blocks:
        raise DocumentSkipped("empty", detail="no text after extraction")
    return Extracted(title=title, blocks=blocks)

"""Extraction per type with the parsers' own structure: headings, line spans, skips."""

from __future__ import annotations

import io

import pytest

from syncd.errors import DocumentSkipped
from syncd.extract import extract


def test_markdown_blocks_carry_heading_paths_and_source_lines():
    text = "# Guide\n\nIntro.\n\n## Setup\n\n- one\n- two\n\n```sh\nmake\n```\n"
    blocks = extract(text.encode(), "markdown").blocks
    lines = text.splitlines()
    assert [b.heading_path for b in blocks] == [("Guide",), ("Guide", "Setup"), ("Guide", "Setup")]
    for b in blocks:
        assert "\n".join(lines[b.start_line - 1:b.end_line]).strip() == b.text.strip()
    assert extract(text.encode(), "markdown").title == "Guide"


def test_rst_sections_become_heading_paths_and_heading_lines_are_not_text():
    text = "Guide\n=====\n\nIntro para.\n\nSetup\n-----\n\nRun it.\n"
    ex = extract(text.encode(), "rst")
    assert ex.title == "Guide"
    assert [(b.text, b.heading_path, b.start_line) for b in ex.blocks] == [
        ("Intro para.", ("Guide",), 4), ("Run it.", ("Guide", "Setup"), 9)]


def test_html_drops_scripts_and_keeps_headings():
    html = ("<html><head><title>T</title><script>alert('x')</script></head><body>\n<h1>Top</h1>\n"
            "<p>Visible <b>text</b>.</p>\n<script>var secret = 1;</script>\n<h2>Sub</h2>\n"
            "<ul><li>item</li></ul>\n</body></html>")
    ex = extract(html.encode(), "html")
    assert [(b.text, b.heading_path) for b in ex.blocks] == [("Visible text.", ("Top",)), ("item", ("Top", "Sub"))]
    assert all("secret" not in b.text and "alert" not in b.text for b in ex.blocks)
    assert ex.title == "T"


def _pdf(text: str, password: str | None = None) -> bytes:
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=300, height=300)
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject(
        {NameObject("/F1"): writer._add_object(font)})})
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 12 Tf 20 200 Td ({text}) Tj ET".encode())
    page[NameObject("/Contents")] = writer._add_object(stream)
    if password:
        writer.encrypt(password)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def test_pdf_text_is_extracted_with_the_page_in_the_heading_path():
    blocks = extract(_pdf("Quarterly report figures"), "pdf").blocks
    assert blocks[0].text == "Quarterly report figures" and blocks[0].heading_path == ("page 1",)


@pytest.mark.parametrize(("content", "media_type", "reason"), [
    (b"", "markdown", "empty"),
    (b"   \n\n", "text", "empty"),
    (b"abc\x00def", "text", "binary"),
    (b"caf\xe9 \xfa broken", "text", "undecodable"),
    (b"%PDF-1.7 not really", "pdf", "corrupt"),
    ("x" * 100, "text", "too-large"),
])
def test_bad_content_is_skipped_with_a_reason_code(content, media_type, reason):
    if isinstance(content, str):
        content = content.encode()
    with pytest.raises(DocumentSkipped) as err:
        extract(content, media_type, size_limit=50)
    assert err.value.reason == reason


def test_encrypted_pdf_is_skipped_as_encrypted():
    with pytest.raises(DocumentSkipped) as err:
        extract(_pdf("secret", password="hunter2-long-password"), "pdf")
    assert err.value.reason == "encrypted"


def test_utf16_with_bom_and_utf8_bom_decode():
    assert extract("hello wörld".encode("utf-16"), "text").blocks[0].text == "hello wörld"
    assert extract(b"\xef\xbb\xbfbom text", "text").blocks[0].text == "bom text"


def test_form_feeds_and_unicode_line_separators_lose_no_text_and_keep_line_numbers():
    text = "# Title\n\nFirst para with a form\x0cfeed.\n\nSecond para\u2028still second.\n\n## Sub\n\nThird para.\n"
    blocks = extract(text.encode(), "markdown").blocks
    assert [b.text for b in blocks] == ["First para with a form\x0cfeed.", "Second para\u2028still second.", "Third para."]
    assert [b.start_line for b in blocks] == [3, 5, 9]
    plain = "one\n\n\x0c\n\ntwo\n"
    assert [(b.text, b.start_line) for b in extract(plain.encode(), "text").blocks] == [("one", 1), ("two", 5)]


def test_html_line_breaks_do_not_stretch_the_cited_line_span():
    html = "<html><body>\n<h1>T</h1>\n<p>one<br>two<br>three</p>\n</body></html>"
    block = extract(html.encode(), "html").blocks[0]
    assert block.text == "one two three" and (block.start_line, block.end_line) == (3, 3)


def test_a_parser_crash_on_one_document_skips_it_and_keeps_the_others(tmp_path, docs, make_runtime):
    from tests.conftest import write_config

    cfg = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs),
                                   "include": ["**/*.md", "**/*.wiki"]}])
    (docs / "good.md").write_text("# Good\n\ngood text\n")
    (docs / "bad.wiki").write_text("{{" * 3000 + "x" + "}}" * 3000 + "\n")
    rt = make_runtime(cfg)
    summary = rt.engine.reconcile("docs")
    assert set(rt.engine.docs("docs")) == {"good.md"}
    assert [(f.doc_id, f.reason.split(":")[0]) for f in summary.failures] == [("bad.wiki", "extract-failed")]
    # Skipped until it changes: the next cycle neither re-reads it nor reports it again.
    again = rt.engine.reconcile("docs")
    assert again.failures == [] and again.docs_unchanged == 2

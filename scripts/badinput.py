#!/usr/bin/env python3
"""Generate the bad-input corpus: files a file share really holds and a naive indexer chokes on.

    python scripts/badinput.py DIR        # writes the corpus into DIR (an empty folder) and prints a manifest

Nothing binary is committed: everything is produced here. ``generate(root)`` returns the manifest
``{doc_id: expectation}`` where the expectation is ``"indexed"`` (with ``phrase``, a word that must be
findable in its chunks, and ``absent``, text that must not be) or ``"skipped:<reason>"`` /
``"failed:<reason>"`` with the structured reason syncd must record. Symlinks pointing outside the root
land in ``<root>/../outside``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import unicodedata
from pathlib import Path
from typing import Any

GIB = 1 << 30


def _pdf_bytes(text: str, *, password: str | None = None) -> bytes:
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=300, height=200)
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject(
        {NameObject("/F1"): writer._add_object(font)})})
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode())
    page[NameObject("/Contents")] = writer._add_object(stream)
    if password is not None:
        writer.encrypt(user_password=password, owner_password=password + "-owner")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def generate(root: Path) -> dict[str, dict[str, Any]]:
    """Write the corpus into ``root``; return what syncd must do with each file."""
    root.mkdir(parents=True, exist_ok=True)
    outside = root.parent / "outside"
    outside.mkdir(exist_ok=True)
    m: dict[str, dict[str, Any]] = {}

    def put(name: str, data: bytes | str, expect: str, **extra: Any) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        path.write_bytes(data)
        m[name] = {"expect": expect, **extra}
        return path

    put("good.md", "# Good\n\nA perfectly ordinary file about zebracorn.\n", "indexed", phrase="zebracorn")
    # Binary content behind text extensions.
    put("binary.md", b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64, "skipped:binary")
    put("random.txt", b"\x00" + os.urandom(64 * 1024), "skipped:binary")
    # Encodings.
    put("invalid-utf8.txt", "caf\u00e9 ".encode("latin-1") * 100 + b"\xff\xfe\xfd", "skipped:undecodable")
    put("utf16-bom.md", "\ufeff# UTF-16\n\nEncoded as UTF-16 with a byte order mark: quokkafish.\n".encode("utf-16"),
        "indexed", phrase="quokkafish")
    put("empty.md", b"", "skipped:empty")
    put("blank.txt", b"   \n\n\t\n", "skipped:empty")
    # Size.
    sparse = root / "sparse-1g.txt"
    with open(sparse, "wb") as fh:
        fh.truncate(GIB)
    m["sparse-1g.txt"] = {"expect": "skipped:too-large"}
    put("long-line.txt", "longlinetoken " + "x" * (2 * 1024 * 1024) + "\n", "indexed", phrase="longlinetoken")
    put("many-lines.txt", "".join(f"line {i} of many\n" for i in range(100_000)) + "manylinesend\n", "indexed",
        phrase="manylinesend")
    put("big-code.md", "# Big code\n\nbigcodeintro\n\n```\n" + ("a = 1  # filler\n" * (10 * 1024 * 1024 // 16))
        + "```\n", "indexed", phrase="bigcodeintro")
    # Deep folders.
    deep = "/".join(f"d{i}" for i in range(60))
    put(f"{deep}/deep.md", "# Deep\n\nSixty folders down: abyssalword.\n", "indexed", phrase="abyssalword")
    # Links and special files.
    os.symlink("loop-b.md", root / "loop-a.md")
    os.symlink("loop-a.md", root / "loop-b.md")
    m["loop-a.md"] = {"expect": "skipped:broken-symlink"}
    m["loop-b.md"] = {"expect": "skipped:broken-symlink"}
    (outside / "secret.md").write_text("# Outside\n\nescapedsecretword must never be indexed.\n")
    os.symlink(os.path.relpath(outside / "secret.md", root), root / "escape.md")
    m["escape.md"] = {"expect": "skipped:symlink-outside-root"}
    os.symlink("good.md", root / "inside-link.md")
    m["inside-link.md"] = {"expect": "indexed", "phrase": "zebracorn"}
    os.mkfifo(root / "fifo.md")
    m["fifo.md"] = {"expect": "skipped:not-a-regular-file"}
    noperm = put("no-permission.md", "# Locked\n\nlockedword\n", "indexed", phrase="lockedword")
    noperm.chmod(0)
    if os.geteuid() != 0:  # root reads it anyway
        m["no-permission.md"] = {"expect": "failed:permission-denied"}
    # Names.
    for name in ["it's \"quoted\".md", "semi;colon.md", "new\nline.md", "-leading-dash.md", "x..y.md",
                 "a..md", "sp ace & amp.md", "back\\slash.md",
                 "o'; DROP TABLE chunks; --.md"]:
        put(name, f"# Name\n\nnamedfile {name!r}\n", "indexed", phrase="namedfile")
    nfc = unicodedata.normalize("NFC", "caf\u00e9.md")
    nfd = unicodedata.normalize("NFD", "caf\u00e9.md")
    put(nfc, "# NFC\n\nnfcspelling\n", "indexed", phrase="nfcspelling")
    put(nfd, "# NFD\n\nnfdspelling\n", "indexed", phrase="nfdspelling")
    long_ascii = "n" * 252 + ".md"
    long_utf8 = "\u00e9" * 126 + ".md"  # 126 * 2 + 3 = 255 bytes
    assert len(long_ascii.encode()) == 255 and len(long_utf8.encode()) == 255
    put(long_ascii, "# Long\n\nlongnameword\n", "indexed", phrase="longnameword")
    put(long_utf8, "# Long\n\nlongutfnameword\n", "indexed", phrase="longutfnameword")
    # Markup.
    put("script.html", "<html><head><title>Scripted</title><script>var scriptpayload = 1;</script>"
        "<style>.stylepayload{}</style></head><body><h1>Scripted</h1><p>htmlbodyword here.</p>"
        "<script>document.write('scriptpayload2')</script></body></html>", "indexed", phrase="htmlbodyword",
        absent=["scriptpayload", "stylepayload"])
    # PDFs.
    good_pdf = _pdf_bytes("pdfgoodword")
    put("corrupt.pdf", good_pdf[: len(good_pdf) // 3], "skipped:corrupt")
    put("encrypted.pdf", _pdf_bytes("pdfsecretword", password="hunter2"),  # noqa: S106 - a test file's password
        "skipped:encrypted")
    return m


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write(__doc__ or "")
        return 2
    manifest = generate(Path(argv[0]))
    sys.stdout.write(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

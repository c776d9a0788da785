"""End to end with the real packaged all-MiniLM-L6-v2: CLI sync/query, the daemon, readers in other processes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for, write_config
from tests.corpus import markdown_doc

pytestmark = pytest.mark.e2e


def syncd(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncd", "--config", str(config), *args], capture_output=True,
                          text=True, input=stdin, timeout=300)


def test_sync_then_query_returns_the_right_document_with_a_correct_citation(tmp_path: Path, docs: Path):
    (docs / "runbooks").mkdir()
    failover = docs / "runbooks" / "failover.md"
    failover.write_text("# Failover\n\n## Steps\n\nPromote the replica with pg_ctl promote, then repoint the pooler.\n\n"
                        "## Afterwards\n\nWrite the post-incident review within two days.\n")
    (docs / "expenses.txt").write_text("Meals are reimbursed up to sixty euros per day while travelling.\n")
    (docs / "security.html").write_text("<h1>Laptops</h1><p>Full-disk encryption is mandatory on laptops.</p>")
    cfg = write_config(tmp_path, [{"name": "kb", "type": "filesystem", "path": str(docs)}])
    out = syncd(cfg, "sync", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["docs_added"] == 3 and summary["docs_failed"] == 0 and summary["failures"] == []

    out = syncd(cfg, "query", "how do I promote the database replica", "-k", "3", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    top = result["results"][0]
    assert result["query"] == "how do I promote the database replica"
    assert (top["doc_id"], top["connector"], top["uri"]) == ("runbooks/failover.md", "kb", str(failover))
    assert top["revision"] == hashlib.blake2b(failover.read_bytes(), digest_size=16).hexdigest()
    assert top["heading_path"] == ["Failover", "Steps"]
    source_lines = failover.read_text().splitlines()[top["start_line"] - 1:top["end_line"]]
    assert top["text"] in "\n".join(source_lines)
    assert top["title"] == "Failover" and top["updated_at"].endswith("Z")
    assert set(top) >= {"score", "text", "doc_id", "connector", "uri", "title", "revision", "chunk_index",
                        "heading_path", "start_line", "end_line", "updated_at"}

    out = syncd(cfg, "query", "-", "-k", "1", stdin="meal allowance per day\nlaptop disk encryption\n")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["results"][0]["doc_id"] for r in lines] == ["expenses.txt", "security.html"]


def test_one_paragraph_edit_reembeds_one_or_two_chunks_with_the_real_model(tmp_path: Path, docs: Path):
    page = docs / "handbook.md"
    page.write_text(markdown_doc(11, sections=14, paras=6))
    cfg = write_config(tmp_path, [{"name": "kb", "type": "filesystem", "path": str(docs)}])
    first = json.loads(syncd(cfg, "sync", "--json").stdout)
    assert first["docs_added"] == 1 and first["chunks_embedded"] >= 50
    text = page.read_text()
    para = [p for p in text.split("\n\n") if p and not p.startswith(("#", "-", "`"))][30]
    page.write_text(text.replace(para, para + " Rotate the certificate before it expires.", 1))
    second = json.loads(syncd(cfg, "sync", "--json").stdout)
    assert second["docs_changed"] == 1 and 1 <= second["chunks_embedded"] <= 2
    assert second["chunks_reused"] >= first["chunks_embedded"] - 2
    page.rename(docs / "renamed.md")
    third = json.loads(syncd(cfg, "sync", "--json").stdout)
    assert (third["docs_renamed"], third["chunks_embedded"]) == (1, 0)
    assert syncd(cfg, "verify").returncode == 0


def test_daemon_makes_an_edit_searchable_for_http_cli_and_python_api_readers(tmp_path: Path, docs: Path, daemon_factory):
    (docs / "welcome.md").write_text("# Welcome\n\nThis folder is watched.\n")
    cfg = write_config(tmp_path, [{"name": "kb", "type": "filesystem", "path": str(docs)}])
    daemon = daemon_factory(cfg).start()
    with open(docs / "welcome.md", "a") as fh:
        fh.write("\nPurple elephants gather at the quarterly offsite.\n")
    hit = wait_for(lambda: [r for r in daemon.search("purple elephants offsite", k=3)
                            if "Purple elephants" in r["text"]], what="/search sees the edit")
    assert hit[0]["doc_id"] == "welcome.md"
    # Another process (the CLI) sees the committed edit too.
    out = syncd(cfg, "query", "purple elephants offsite", "-k", "1", "--json")
    assert "Purple elephants" in json.loads(out.stdout)["results"][0]["text"]
    # And so does the Python API in yet another process.
    code = (f"import json, syncd; idx = syncd.open_index({str(cfg)!r}); "
            "print(json.dumps(idx.search('purple elephants offsite', k=1)))")
    api = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "Purple elephants" in json.loads(api.stdout)[0]["text"]
    # Deleting the file removes it from results.
    (docs / "welcome.md").unlink()
    wait_for(lambda: not any(r["doc_id"] == "welcome.md" for r in daemon.search("purple elephants offsite")),
             what="delete propagated")
    status = daemon.get("/status")[1]
    assert status["store"]["docs"] == 0 and status["connectors"][0]["name"] == "kb"
    assert daemon.stop() == 0

"""SIGHUP reload in the service: connectors removed take their documents along; other sections wait for a restart."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import InProcessDaemon, wait_for, write_config


def test_removing_a_connector_removes_its_documents_and_keeps_the_others(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "one.md").write_text("# One\n\nfrom a\n")
    (b / "two.md").write_text("# Two\n\nfrom b\n")
    both = [{"name": "a", "type": "filesystem", "path": str(a)}, {"name": "b", "type": "filesystem", "path": str(b)}]
    cfg = write_config(tmp_path, both)
    with InProcessDaemon(cfg) as d:
        store = d.service.runtime.store

        def rows() -> set[tuple[str, str]]:
            data = store.scan(["connector", "doc_id"]).to_pylist()
            return {(r["connector"], r["doc_id"]) for r in data}

        assert rows() == {("a", "one.md"), ("b", "two.md")}
        write_config(tmp_path, both[:1], chunking={"max_tokens": 128})
        d.service.reload()
        wait_for(lambda: rows() == {("a", "one.md")}, what="connector b's documents removed")
        # The reload is the writer's work: the rows go in its commit, the status's list right after it.
        wait_for(lambda: [c["name"] for c in d.service.status()["connectors"]] == ["a"], what="b gone from /status")
        # The chunking change needs a restart: the running service keeps its settings.
        assert d.service.config.chunking.max_tokens == 256
        (a / "three.md").write_text("# Three\n\nstill synced\n")
        wait_for(lambda: ("a", "three.md") in rows(), what="the remaining connector keeps syncing")

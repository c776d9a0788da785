"""The index on an object store (a real SeaweedFS S3 server and a real Azurite Azure Blob server on 127.0.0.1,
through ``object_store``): URI and options, credentials
from the environment only, shared facts in the store, the primary key, commit conflicts replayed, and the
local folder still one daemon."""

from __future__ import annotations

import json

import lancedb
import pyarrow as pa
import pytest
from conftest import write_config

from syncd import config as config_mod
from syncd.coordination import SharedStore
from syncd.errors import ConfigError
from syncd.runtime import Runtime, StoreFolderLocked
from syncd.store import PRIMARY_KEY, SIGNATURE_KEY, schema
from syncd.testing import HashEmbedder


def _docs(folder, n=3):
    folder.mkdir(exist_ok=True)
    for i in range(n):
        (folder / f"d{i}.md").write_text(f"# Doc {i}\n\nThe body of document {i} talks about topic{i}.\n")


def test_a_daemon_syncs_into_an_object_store_table_with_the_signature_in_the_table(tmp_path, object_store, make_runtime):
    docs = tmp_path / "docs"
    _docs(docs)
    path = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                        store=object_store.store_section())
    rt = make_runtime(path)
    summary = rt.engine.reconcile("docs")
    assert summary.docs_added == 3 and not summary.failures
    hits = rt.store.search(rt.embedder.encode(["topic1"])[0], "topic1", k=3)
    assert hits[0]["doc_id"] == "d1.md"
    # The signature is in the table itself (its schema metadata), the same for every daemon: no pointer in the
    # state folder or in the store.
    assert not (tmp_path / "state" / "store.json").exists()
    shared = SharedStore(object_store.uri, object_store.storage_options)
    assert shared.get("store.json") is None
    # The table itself is in the bucket: LanceDB finds it there with nothing but the URI and options.
    db = lancedb.connect(object_store.uri, storage_options=object_store.storage_options)
    table = db.open_table("chunks")
    assert table.count_rows() == rt.store.count_rows() > 0
    assert table.schema.metadata[SIGNATURE_KEY].decode() == rt.signature


def test_chunk_id_is_a_non_null_primary_key_on_an_object_store(tmp_path, object_store, make_runtime):
    path = write_config(tmp_path, [], store=object_store.store_section())
    rt = make_runtime(path)
    field = rt.store.table.schema.field("chunk_id")
    assert not field.nullable
    assert field.metadata == PRIMARY_KEY


def test_an_existing_local_table_without_the_primary_key_is_migrated_on_first_start(tmp_path, make_runtime):
    docs = tmp_path / "docs"
    _docs(docs, 2)
    path = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}])
    rt = make_runtime(path)
    rt.engine.reconcile("docs")
    rows = rt.store.count_rows()
    rt.close()
    # The table as an older syncd made it: chunk_id without the mark.
    db = lancedb.connect(str(tmp_path / "index"))
    old = db.open_table("chunks")
    data = old.to_arrow()
    plain = pa.schema([f.remove_metadata() if f.name == "chunk_id" else f for f in schema(rt.embedder.dim)])
    db.create_table("chunks", data=data.cast(plain), mode="overwrite")
    assert not db.open_table("chunks").schema.field("chunk_id").metadata
    again = Runtime(config_mod.load(path), embedder=HashEmbedder())
    try:
        again.open()
        assert again.store.table.schema.field("chunk_id").metadata == PRIMARY_KEY
        assert again.store.count_rows() == rows
        assert again.engine.reconcile("docs").docs_unchanged == 2
    finally:
        again.close()


def test_credentials_in_the_config_file_are_refused_naming_the_key(tmp_path):
    path = write_config(tmp_path, [], store={"uri": "s3://bucket/x",
                                             "storage_options": {"aws_secret_access_key": "abc"}})
    with pytest.raises(ConfigError) as err:
        config_mod.load(path)
    assert "store.storage_options" in str(err.value) and "aws_secret_access_key" in str(err.value)
    assert "abc" not in str(err.value)


def test_an_env_key_names_the_variable_holding_a_credential(tmp_path, s3_store, monkeypatch, make_runtime):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("MY_S3_SECRET", s3_store.server.secret_key)
    section = s3_store.store_section()
    section["storage_options"]["aws_secret_access_key_env"] = "MY_S3_SECRET"  # type: ignore[index]
    path = write_config(tmp_path, [], store=section)
    rt = make_runtime(path)
    assert rt.store.count_rows() == 0
    monkeypatch.delenv("MY_S3_SECRET")
    with pytest.raises(ConfigError, match="MY_S3_SECRET is not set"):
        config_mod.load(path).store.resolved_storage_options()


def test_two_daemons_on_one_local_folder_with_different_state_folders_are_refused(tmp_path):
    docs = tmp_path / "docs"
    _docs(docs, 1)
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    index = str(tmp_path / "shared-index")
    pa_ = write_config(a, [{"name": "one", "type": "filesystem", "path": str(docs)}], store={"uri": index})
    pb = write_config(b, [{"name": "two", "type": "filesystem", "path": str(docs)}], store={"uri": index})
    first = Runtime(config_mod.load(pa_), embedder=HashEmbedder())
    try:
        with pytest.raises(StoreFolderLocked) as err:
            Runtime(config_mod.load(pb), embedder=HashEmbedder())
        assert index in str(err.value) and str(a / "state") in str(err.value)
    finally:
        first.close()
    Runtime(config_mod.load(pb), embedder=HashEmbedder()).close()  # free again once the first has stopped


def test_a_commit_that_loses_to_another_writer_is_replayed_on_the_latest_version(tmp_path, object_store, make_runtime):
    """Another writer's Overwrite commit makes this handle's next merge incompatible (FACTS.md): the store
    checks out the latest version and replays the batch, and counts the retry."""
    docs = tmp_path / "docs"
    _docs(docs, 2)
    path = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                        store=object_store.store_section())
    rt = make_runtime(path)
    rt.engine.reconcile("docs")
    rt.store.table.version  # noqa: B018 - this handle now reads the current version
    other = lancedb.connect(object_store.uri, storage_options=object_store.storage_options).open_table("chunks")
    other.add(other.to_arrow(), mode="overwrite")
    (docs / "d0.md").write_text("# Doc 0\n\nRewritten while another writer committed.\n")
    summary = rt.engine.reconcile("docs")
    assert summary.docs_changed == 1 and not summary.failures
    assert rt.store.commit_retries >= 1
    rows = rt.store.scan(["doc_id", "text"]).to_pylist()
    assert any("Rewritten" in r["text"] for r in rows)
    assert sorted({r["doc_id"] for r in rows}) == ["d0.md", "d1.md"]


def test_status_of_a_shared_store_names_this_daemon_and_its_connectors(tmp_path, object_store, make_runtime):
    docs = tmp_path / "docs"
    _docs(docs, 1)
    path = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                        store=object_store.store_section())
    rt = make_runtime(path)
    daemons = rt.daemons()
    assert daemons is not None and len(daemons) == 1
    assert daemons[0]["id"] == rt.leases.daemon_id and daemons[0]["connectors"] == ["docs"]
    assert daemons[0]["maintenance"] is True
    assert json.dumps(daemons)  # plain JSON for /status


def test_syncd_status_shows_the_daemons_sharing_the_store(tmp_path, object_store, make_runtime):
    import os
    import subprocess
    import sys

    docs = tmp_path / "docs"
    _docs(docs, 1)
    path = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                        store=object_store.store_section())
    rt = make_runtime(path)  # holds the lease of "docs", as a daemon on another machine would
    other = tmp_path / "other"
    other.mkdir()
    viewer = write_config(other, [], store=object_store.store_section())
    env = {**os.environ, **object_store.env}
    out = subprocess.run([sys.executable, "-m", "syncd", "--config", str(viewer), "status", "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    data = json.loads(out.stdout)
    assert [(d["id"], d["connectors"], d["maintenance"]) for d in data["store"]["daemons"]] == [
        (rt.leases.daemon_id, ["docs"], True)]
    text = subprocess.run([sys.executable, "-m", "syncd", "--config", str(viewer), "status"],
                          capture_output=True, text=True, env=env, timeout=300).stdout
    assert "1 daemon(s) share this store" in text and f"{rt.leases.daemon_id} on" in text and "docs, maintenance" in text


def test_credentials_come_from_the_aws_credentials_file_when_the_environment_has_none(
        tmp_path, s3_store, monkeypatch, make_runtime):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    creds = tmp_path / "credentials"
    creds.write_text(f"[other]\naws_access_key_id = nope\naws_secret_access_key = nope\n\n[team]\n"
                     f"aws_access_key_id = {s3_store.server.access_key}\n"
                     f"aws_secret_access_key = {s3_store.server.secret_key}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "team")
    docs = tmp_path / "docs"
    _docs(docs, 1)
    path = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}],
                        store=s3_store.store_section())
    rt = make_runtime(path)
    assert rt.engine.reconcile("docs").docs_added == 1
    assert rt.daemons()[0]["connectors"] == ["docs"]  # the leases too were written with the file's keys


def test_daemons_starting_together_on_an_empty_store_create_its_table_once(tmp_path, object_store):
    """Two creations would make the second an Overwrite, dropping what the first committed: the conditional
    create of the store's pointer elects one creator; the other opens its table."""
    import threading

    runtimes, errors = [], []
    barrier = threading.Barrier(3)

    def start(i):
        folder = tmp_path / f"d{i}"
        folder.mkdir()
        docs = folder / "docs"
        _docs(docs, 2)
        path = write_config(folder, [{"name": f"c{i}", "type": "filesystem", "path": str(docs)}],
                            store=object_store.store_section())
        rt = Runtime(config_mod.load(path), embedder=HashEmbedder())
        runtimes.append(rt)
        barrier.wait()
        try:
            rt.open()
            rt.engine.reconcile(f"c{i}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        rt = runtimes[0]
        rt.store.table.checkout_latest()  # this handle last moved with its own commit
        ops = rt.store.version_ops(1, int(rt.store.table.version))
        assert [v for v, op in ops if op == "Overwrite"] == [1], ops  # the creation only
        data = rt.store.scan(["connector", "doc_id"]).to_pylist()
        assert sorted({(r["connector"], r["doc_id"]) for r in data}) == [
            (f"c{i}", f"d{j}.md") for i in range(3) for j in range(2)]
    finally:
        for rt in runtimes:
            rt.close()


def test_an_azure_account_key_comes_from_an_env_key_never_from_the_file(tmp_path, az_store, monkeypatch, make_runtime):
    from azurite_server import KEY

    (tmp_path / "refused").mkdir()
    refused = write_config(tmp_path / "refused", [], store={
        "uri": az_store.uri, "storage_options": {**az_store.storage_options, "account_key": KEY}})
    with pytest.raises(ConfigError) as err:
        config_mod.load(refused)
    assert "account_key" in str(err.value) and KEY not in str(err.value)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_KEY")
    monkeypatch.setenv("INDEX_ACCOUNT_KEY", KEY)
    docs = tmp_path / "docs"
    _docs(docs, 2)
    section = az_store.store_section()
    section["storage_options"]["account_key_env"] = "INDEX_ACCOUNT_KEY"  # type: ignore[index]
    path = write_config(tmp_path, [{"name": "docs", "type": "filesystem", "path": str(docs)}], store=section)
    rt = make_runtime(path)
    assert rt.engine.reconcile("docs").docs_added == 2
    assert rt.daemons()[0]["connectors"] == ["docs"]  # the leases too were written with that key

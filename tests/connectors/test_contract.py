"""The connector contract, run against every connector type (as APScheduler runs one suite against every data
store): listing, read, change detection, delete, rename, cursor semantics, bad input, and an engine sync
that ``verify`` finds clean.

Each source is real: a folder watched with inotify, a git repository pushed to a ``file://`` remote, the real
MediaWiki on 127.0.0.1, and a local HTTP server answering like Confluence. Where a type documents another
way to meet a clause (Confluence: no deletions in its incremental poll, page ids that survive a rename; the
filesystem: watched, no cursor), the suite asserts that alternative instead of skipping.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from connector_sources import (
    NAME,
    ConfluenceSource,
    Feed,
    FilesystemSource,
    GitSource,
    MediaWikiSource,
    Source,
    hinted_ids,
    removed,
    rescanned,
    upserted,
)

from connectors.base import Connector, is_valid_doc_id
from syncd.errors import DocumentGone, DocumentSkipped
from syncd.models import SourceDocument, SyncSummary
from syncd.runtime import Runtime
from syncd.verify import verify

# Clauses a connector breaks today, found by this suite (strict: a fix turns the test red until the entry goes).
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


def known_violation(request: pytest.FixtureRequest, source: Source, clause: str) -> None:
    reason = KNOWN_VIOLATIONS.get((clause, source.kind))
    if reason is not None:
        request.applymarker(pytest.mark.xfail(reason=f"connector bug: {reason}", strict=True))


@pytest.fixture(params=["filesystem", "git", pytest.param("mediawiki", marks=pytest.mark.mediawiki), "confluence"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Source]:
    """One source of each connector type, with a driver that changes it as a user would."""
    made: Source
    if request.param == "filesystem":
        made = FilesystemSource(tmp_path)
    elif request.param == "git":
        made = GitSource(tmp_path)
    elif request.param == "mediawiki":
        made = MediaWikiSource(tmp_path, request.getfixturevalue("mediawiki"), request.getfixturevalue("wiki_ns"),
                               request.getfixturevalue("wiki_client"))
    else:
        monkeypatch = request.getfixturevalue("monkeypatch")
        made = ConfluenceSource(tmp_path, request.getfixturevalue("httpserver"), monkeypatch.setenv)
    yield made
    made.close()


@pytest.fixture
def connector(source: Source) -> Connector:
    return source.connector()


@pytest.fixture
def feed(source: Source, connector: Connector) -> Iterator[Feed]:
    followed = Feed(source, connector)
    yield followed
    followed.close()


def listing(connector: Connector) -> dict[str, str]:
    """doc_id -> fingerprint, failing on a document listed twice."""
    refs = list(connector.list_documents())
    ids = [r.doc_id for r in refs]
    assert len(ids) == len(set(ids)), f"a document was listed twice: {ids}"
    return {r.doc_id: r.fingerprint for r in refs}


def assert_matches(source: Source, doc: SourceDocument, doc_id: str, text: str) -> None:
    expected = source.expected(doc_id)
    assert doc.doc_id == doc_id
    assert (doc.revision, doc.uri, doc.title, doc.media_type) == (
        expected.revision, expected.uri, expected.title, expected.media_type)
    assert doc.content == expected.content
    assert text.encode() in doc.content
    if expected.identity is not None:
        assert doc.identity == expected.identity


# -- 1. listing ----------------------------------------------------------------------------------------------
def test_listing_yields_each_document_once_with_a_fingerprint_that_changes_only_with_its_content(
        source: Source, connector: Connector) -> None:
    a = source.add("alpha", "Alpha is about otters.")
    b = source.add("beta", "Beta is about badgers.")
    source.publish()
    first = listing(connector)
    assert set(first) == {a, b}
    assert listing(connector) == first, "nothing changed, so nothing in the listing may change"

    source.edit(a, "Alpha is about otters, edited: they hold hands while they sleep.")
    source.publish()
    after = listing(connector)
    assert set(after) == {a, b}
    assert after[a] != first[a]
    assert after[b] == first[b], "an edit of another document must not change this one's fingerprint"


# -- 2. read -------------------------------------------------------------------------------------------------
def test_read_returns_the_content_and_citation_metadata_the_source_holds(source: Source, connector: Connector) -> None:
    text = "Gamma is about gazelles crossing the plain."
    a = source.add("gamma", text)
    source.publish()
    listing(connector)
    doc = connector.read(a)
    assert_matches(source, doc, a, text)
    assert doc.title == source.title_of("gamma")
    assert connector.read(a).identity == doc.identity, "reading twice gives the same identity"


def test_read_of_a_document_that_does_not_exist_raises_document_gone(source: Source, connector: Connector) -> None:
    source.add("present", "A document so the source is not empty.")
    source.publish()
    listing(connector)
    with pytest.raises(DocumentGone):
        connector.read(source.missing_id())


# -- 3. change detection -------------------------------------------------------------------------------------
def test_an_edit_is_reported_and_read_gives_the_new_content(source: Source, connector: Connector, feed: Feed) -> None:
    a = source.add("delta", "Delta is about dolphins.")
    b = source.add("epsilon", "Epsilon is about eels.")
    source.publish()
    feed.start()
    listing(connector)
    before = connector.read(a)

    text = "Delta is about dolphins, edited: they sleep with one eye open."
    source.edit(a, text)
    source.publish()
    changes = feed.changes(lambda cs: upserted(cs, a), what=f"an edit of {a} to be reported")
    assert not upserted(changes, b), f"only {a} changed: {changes}"
    after = connector.read(a)
    assert_matches(source, after, a, text)
    assert after.revision != before.revision and after.identity != before.identity


def test_a_read_after_a_reported_edit_never_serves_content_fetched_before_it(
        request: pytest.FixtureRequest, source: Source, connector: Connector, feed: Feed) -> None:
    """A reconcile reads only the documents whose fingerprint changed; the reads of a remote source fetch the
    following documents ahead. An edit of one of those, reported by the next poll, must still read as new."""
    known_violation(request, source, "stale read-ahead")
    a = source.add("delta", "Delta is about dolphins.")
    b = source.add("epsilon", "Epsilon is about eels.")
    source.publish()
    feed.start()
    listing(connector)
    connector.read(a)

    text = "Epsilon is about eels, edited: they cross the ocean to spawn."
    source.edit(b, text)
    source.publish()
    feed.changes(lambda cs: upserted(cs, b), what=f"an edit of {b} to be reported")
    assert_matches(source, connector.read(b), b, text)


def test_a_read_after_a_listing_that_shows_an_edit_never_serves_content_fetched_before_it(
        source: Source, connector: Connector) -> None:
    """The same for a full listing (a reconcile): once it shows a new fingerprint, read gives the new content."""
    a = source.add("delta", "Delta is about dolphins.")
    b = source.add("epsilon", "Epsilon is about eels.")
    source.publish()
    before = listing(connector)
    connector.read(a)

    text = "Epsilon is about eels, edited: they cross the ocean to spawn."
    source.edit(b, text)
    source.publish()
    assert listing(connector)[b] != before[b]
    assert_matches(source, connector.read(b), b, text)


# -- 4. delete -----------------------------------------------------------------------------------------------
def test_a_deleted_document_is_reported_or_left_out_of_the_listing_and_reads_as_gone(
        source: Source, connector: Connector, feed: Feed) -> None:
    a = source.add("zeta", "Zeta is about zebras.")
    b = source.add("eta", "Eta is about egrets.")
    source.publish()
    feed.start()

    source.delete(a)
    source.publish()
    if source.reports_deletes:
        feed.changes(lambda cs: removed(cs, a), what=f"the deletion of {a} to be reported")
    else:
        # Documented: the incremental poll cannot see deletions; once the reconcile interval has passed,
        # the poll asks for the full listing, which the engine compares with the index.
        source.make_reconcile_due(connector)
        feed.changes(lambda cs: rescanned(cs, a), what="a due reconcile to ask for the full listing")
    assert set(listing(connector)) == {b}
    with pytest.raises(DocumentGone):
        connector.read(a)
    assert connector.read(b).doc_id == b


# -- 5. rename -----------------------------------------------------------------------------------------------
def test_a_renamed_document_keeps_its_content_identity_under_its_new_id(
        source: Source, connector: Connector, feed: Feed) -> None:
    text = "Theta is about thrushes singing at dawn."
    a = source.add("theta", text)
    b = source.add("iota", "Iota is about ibises.")
    source.publish()
    feed.start()
    listing(connector)
    before = connector.read(a)

    new = source.rename(a, "kappa")
    source.publish()
    if source.stable_ids:
        # Documented (Confluence): the doc id is the page id, which a rename keeps; the page is reported as
        # changed and reads with its new title and the same text.
        assert new == a
        feed.changes(lambda cs: upserted(cs, a), what=f"the rename of {a} to be reported")
        assert set(listing(connector)) == {a, b}
        after = connector.read(a)
        assert after.title == source.title_of("kappa")
        assert_matches(source, after, a, text)
        return
    assert new != a
    changes = feed.changes(lambda cs: removed(cs, a) and upserted(cs, new),
                           what=f"the rename of {a} to {new} to be reported")
    assert not upserted(changes, b), f"only {a} moved: {changes}"
    assert set(listing(connector)) == {new, b}
    with pytest.raises(DocumentGone):
        connector.read(a)
    after = connector.read(new)
    assert after.identity == before.identity, "the engine pairs a rename by equal identity"
    assert after.content == before.content
    assert after.title == source.title_of("kappa")
    assert_matches(source, after, new, text)


# -- 6. cursor semantics -------------------------------------------------------------------------------------
def test_the_cursor_advances_only_when_committed(source: Source, connector: Connector, feed: Feed) -> None:
    seed = source.add("lambda", "Lambda is about lynxes.")
    source.publish()
    feed.start()
    a = source.add("mu", "Mu is about moles.")
    b = source.add("nu", "Nu is about newts.")
    source.publish()
    first = feed.changes(lambda cs: upserted(cs, a) and upserted(cs, b), what="two new documents")
    if source.watched:
        # Documented (filesystem): watched, not polled, so there is no cursor: poll() falls back to the
        # listing (None), commit_cursor() does nothing, and the listing alone is the truth, every time.
        assert connector.poll_interval is None
        assert connector.poll() is None
        connector.commit_cursor()
        assert set(listing(connector)) == {seed, a, b} == set(listing(connector))
        return
    assert connector.poll_interval is not None
    again = list(connector.poll() or [])
    assert hinted_ids(again).keys() == hinted_ids(first).keys(), "without commit_cursor() the same changes come back"
    assert [c.kind for c in again] == [c.kind for c in first]
    connector.commit_cursor()
    assert list(connector.poll() or []) == [], "after commit_cursor() nothing new is reported"
    connector.commit_cursor()

    source.edit(a, "Mu is about moles, edited: they swim well.")
    source.publish()
    later = feed.changes(lambda cs: upserted(cs, a), what="an edit after the committed cursor")
    assert set(hinted_ids(later)) == {a}


# -- 7. bad input --------------------------------------------------------------------------------------------
def test_a_document_that_cannot_be_indexed_reads_fine_or_is_skipped_with_a_reason(
        source: Source, connector: Connector) -> None:
    ok = source.add("ordinary", "An ordinary document beside the hard ones.")
    hard = source.bad_inputs()
    source.publish()
    listed = listing(connector)
    assert ok in listed
    outcomes: dict[str, str] = {}
    for label, doc_id in hard.items():
        try:
            doc = connector.read(doc_id)
        except DocumentSkipped as exc:
            assert exc.reason, f"{label}: skipped without a reason"
            outcomes[label] = f"skipped: {exc.reason}"
        except Exception as exc:  # noqa: BLE001 - the clause is exactly "no other exception type"
            pytest.fail(f"{label} ({doc_id!r}): read raised {type(exc).__name__}: {exc}")
        else:
            assert doc.doc_id == doc_id, f"{label}: read under another id"
            assert doc_id in listed, f"{label}: readable but missing from the listing"
            outcomes[label] = "read"
    # A name is never a reason to skip: odd names are listed and read under their own id.
    assert outcomes["odd name"] == "read" and hard["odd name"] in listed
    if "non-UTF-8 name" in hard:
        assert outcomes["non-UTF-8 name"] == "read"


def test_an_id_naming_something_outside_the_source_reads_as_gone(
        request: pytest.FixtureRequest, source: Source, connector: Connector) -> None:
    """Ids the engine would accept that name something beside the source (a file outside the root, a page of
    a namespace or space not indexed, an excluded file) read as DocumentGone, never as a document."""
    known_violation(request, source, "outside")
    source.add("ordinary", "An ordinary document.")
    outsiders = source.outsiders()
    source.publish()
    listed = listing(connector)
    assert not set(outsiders.values()) & set(listed)
    problems = []
    for label, doc_id in outsiders.items():
        assert is_valid_doc_id(doc_id)
        try:
            doc = connector.read(doc_id)
        except DocumentGone:
            continue
        except Exception as exc:  # noqa: BLE001 - any other outcome is the finding
            problems.append(f"{label} ({doc_id!r}): {type(exc).__name__}: {exc}")
        else:
            problems.append(f"{label} ({doc_id!r}): read as {doc.title!r} from {doc.uri}")
    assert not problems, problems


def test_another_spelling_of_a_documents_id_reads_as_gone_so_no_document_is_indexed_twice(
        request: pytest.FixtureRequest, source: Source, connector: Connector) -> None:
    """The listing yields one id per document; any other spelling of it (dot segments, case the source folds,
    a query or fragment) reads as DocumentGone, so a stray hint cannot index the same document twice."""
    known_violation(request, source, "alias")
    a = source.add("alpha", "Alpha is about alpacas.")
    source.publish()
    assert set(listing(connector)) == {a}
    problems = []
    for label, doc_id in source.aliases(a).items():
        assert is_valid_doc_id(doc_id) and doc_id != a
        try:
            doc = connector.read(doc_id)
        except DocumentGone:
            continue
        except Exception as exc:  # noqa: BLE001 - any other outcome is the finding
            problems.append(f"{label} ({doc_id!r}): {type(exc).__name__}: {exc}")
        else:
            problems.append(f"{label} ({doc_id!r}): read {a!r} as {doc.doc_id!r}")
    assert not problems, problems


def test_an_id_that_names_nothing_reads_as_gone_never_as_an_error(source: Source, connector: Connector) -> None:
    """Ids no listing yields whatever the source holds (empty, NUL, not Unicode, too long, malformed for the
    kind of source) read as DocumentGone: never a library's exception, and never a retried failure."""
    a = source.add("alpha", "Alpha is about alpacas.")
    source.publish()
    assert set(listing(connector)) == {a}
    problems = []
    for label, doc_id in source.nameless(a).items():
        try:
            doc = connector.read(doc_id)
        except DocumentGone:
            continue
        except Exception as exc:  # noqa: BLE001 - any other outcome is the finding
            problems.append(f"{label} ({doc_id!r}): {type(exc).__name__}: {exc}")
        else:
            problems.append(f"{label} ({doc_id!r}): read {a!r} as {doc.doc_id!r}")
    assert not problems, problems


def test_a_listing_under_a_prefix_never_leaves_the_full_listing(source: Source, connector: Connector) -> None:
    """A folder listing (the engine's rescan of a folder) under a prefix outside the root, through a symlinked
    folder, malformed or not valid yields only documents of the full listing, and never raises."""
    if not source.lists_prefixes:
        # Documented: a remote source lists everything at once; its listing takes no prefix.
        with pytest.raises(TypeError):
            connector.list_documents("")  # type: ignore[call-arg]
        return
    a = source.add("alpha", "Alpha is about alpacas.")
    ids = {**source.outsiders(), **source.aliases(a), **source.nameless(a)}
    source.publish()
    full = listing(connector)
    prefixes = {f"{label} ({doc_id!r})": doc_id for label, doc_id in ids.items()}
    prefixes |= {f"folder of {label} ({doc_id!r})": doc_id.rpartition("/")[0] for label, doc_id in ids.items()
                 if doc_id.rpartition("/")[0]}
    problems = []
    for label, prefix in prefixes.items():
        try:
            under = {r.doc_id for r in connector.list_documents(prefix)}  # type: ignore[call-arg]
        except Exception as exc:  # noqa: BLE001 - any outcome but a listing is the finding
            problems.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        if under - set(full):
            problems.append(f"{label}: listed {sorted(under - set(full))}")
    assert not problems, problems


# -- 8. the engine, end to end -------------------------------------------------------------------------------
def engine_sync(rt: Runtime, source: Source, feed: Feed, touched: set[str]) -> SyncSummary:
    """One cycle as the service runs it: watcher hints (or one poll) applied, then the cursor committed."""
    connector = rt.connectors[NAME]
    changes = feed.changes(lambda cs: all(upserted(cs, d) or removed(cs, d) or rescanned(cs, d) for d in touched),
                           what=f"changes of {sorted(touched)}")
    if any(c.kind == "rescan" for c in changes):
        summary = rt.engine.reconcile(NAME)
    else:
        summary = rt.engine.process({NAME: hinted_ids(changes)})
    assert not [f for f in summary.failures if not f.doc_id], summary.failures
    connector.commit_cursor()
    return summary


def indexed(rt: Runtime) -> set[str]:
    return {doc_id for (conn, doc_id) in rt.store.indexed_docs() if conn == NAME}


def assert_clean(rt: Runtime) -> None:
    report = verify(rt)
    assert report.ok, report.as_dict()
    assert indexed(rt) == set(listing(rt.connectors[NAME]))


def test_engine_sync_through_add_edit_rename_and_delete_leaves_verify_clean(
        source: Source, make_runtime: Any) -> None:
    rt: Runtime = make_runtime(source.config_path)
    connector = rt.connectors[NAME]
    a = source.add("xi", "Xi is about xenops birds.\n\nA second paragraph on their bills.")
    b = source.add("omicron", "Omicron is about ocelots.\n\nA second paragraph on their spots.")
    c = source.add("pi", "Pi is about pikas.\n\nA second paragraph on their hay piles.")
    source.publish()
    feed = Feed(source, connector)
    try:
        # The first cycle is a full comparison (the service's catch-up at start).
        if source.watched:
            feed.start()
            summary = rt.engine.reconcile(NAME)
        else:
            summary = engine_sync(rt, source, feed, {a, b, c})
        assert summary.docs_added == 3 and not summary.failures
        assert_clean(rt)

        source.edit(a, "Xi is about xenops birds.\n\nA second paragraph, edited: they probe bark for insects.")
        source.publish()
        summary = engine_sync(rt, source, feed, {a})
        assert summary.docs_changed == 1 and not summary.failures
        assert_clean(rt)

        new = source.rename(b, "rho")
        source.publish()
        summary = engine_sync(rt, source, feed, {b, new})
        assert summary.chunks_embedded == 0, "a rename embeds nothing"
        if source.stable_ids:
            assert new == b and summary.docs_changed == 1
        else:
            assert (summary.docs_renamed, summary.docs_added, summary.docs_deleted) == (1, 0, 0)
        assert_clean(rt)

        source.delete(c)
        source.publish()
        if not source.reports_deletes:
            source.make_reconcile_due(connector)
        summary = engine_sync(rt, source, feed, {c})
        assert summary.docs_deleted == 1 and not summary.failures
        assert_clean(rt)
        assert indexed(rt) == {a, new}
    finally:
        feed.close()

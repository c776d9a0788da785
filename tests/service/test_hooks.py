"""Push hooks (POST /hooks/NAME) on the service in this process: a real bare repository, real HTTP, real
LanceDB, the HashEmbedder. Forge events are shaped as the forges' documentation shows them (abridged to
the fields a push event always has); valid ones start exactly one poll, invalid ones nothing."""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import os
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import wait_for, write_config
from gitrepo import GitRepo
from prometheus_client.parser import text_string_to_metric_families

from syncd import config as config_mod
from syncd import hooks
from syncd.testing import HashEmbedder

SECRET = "hook-secret-" + "5f2a9c"
ZERO = "0" * 40


# -- event bodies, as the forges document them --------------------------------------------------------------
def github_push(ref: str, before: str, after: str) -> dict[str, Any]:
    """GitHub's `push` event (docs.github.com, webhook events and payloads: push), abridged."""
    return {
        "ref": ref, "before": before, "after": after, "created": False, "deleted": False, "forced": False,
        "base_ref": None, "compare": f"https://github.com/octo-org/docs/compare/{before[:12]}...{after[:12]}",
        "commits": [{"id": after, "tree_id": "f" * 40, "distinct": True, "message": "Update the handbook",
                     "timestamp": "2026-11-30T12:00:00Z", "url": f"https://github.com/octo-org/docs/commit/{after}",
                     "author": {"name": "Octo Cat", "email": "octocat@github.com", "username": "octocat"},
                     "committer": {"name": "Octo Cat", "email": "octocat@github.com", "username": "octocat"},
                     "added": [], "removed": [], "modified": ["handbook.md"]}],
        "head_commit": {"id": after, "message": "Update the handbook"},
        "repository": {"id": 1296269, "name": "docs", "full_name": "octo-org/docs", "private": False,
                       "default_branch": "main", "master_branch": "main"},
        "pusher": {"name": "octocat", "email": "octocat@github.com"},
        "sender": {"login": "octocat", "id": 1, "type": "User"},
    }


def gitlab_push(ref: str, before: str, after: str) -> dict[str, Any]:
    """GitLab's `Push Hook` (docs.gitlab.com, webhook events: push events), abridged."""
    return {
        "object_kind": "push", "event_name": "push", "before": before, "after": after, "ref": ref,
        "ref_protected": True, "checkout_sha": after, "user_id": 4, "user_name": "John Smith",
        "user_username": "jsmith", "user_email": "john@example.com", "project_id": 15,
        "project": {"id": 15, "name": "Docs", "path_with_namespace": "mike/docs", "default_branch": "main",
                    "git_http_url": "http://example.com/mike/docs.git"},
        "commits": [{"id": after, "message": "Update the handbook", "title": "Update the handbook",
                     "timestamp": "2026-11-30T12:00:00+00:00", "url": f"http://example.com/mike/docs/commit/{after}",
                     "author": {"name": "John Smith", "email": "john@example.com"},
                     "added": [], "modified": ["handbook.md"], "removed": []}],
        "total_commits_count": 1, "repository": {"name": "Docs", "url": "git@example.com:mike/docs.git"},
    }


def gitea_push(ref: str, before: str, after: str) -> dict[str, Any]:
    """Gitea's `push` event (docs.gitea.com, webhooks: event information), abridged."""
    return {
        "ref": ref, "before": before, "after": after,
        "compare_url": f"http://localhost:3000/gitea/docs/compare/{before}...{after}",
        "commits": [{"id": after, "message": "Webhooks Yay!", "url": f"http://localhost:3000/gitea/docs/commit/{after}",
                     "author": {"name": "Gitea", "email": "someone@gitea.io", "username": "gitea"},
                     "committer": {"name": "Gitea", "email": "someone@gitea.io", "username": "gitea"},
                     "timestamp": "2026-11-30T13:52:11-04:00"}],
        "repository": {"id": 140, "name": "docs", "full_name": "gitea/docs", "private": False,
                       "default_branch": "main"},
        "pusher": {"id": 1, "login": "gitea", "username": "gitea"},
        "sender": {"id": 1, "login": "gitea", "username": "gitea"},
    }


def signed(sender: str, body: bytes, secret: str = SECRET) -> dict[str, str]:
    """The headers each forge sends with a push event signed with ``secret``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if sender == "github":
        return {"X-GitHub-Event": "push", "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
                "X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json",
                "User-Agent": "GitHub-Hookshot/044aadd"}
    if sender == "gitlab":
        return {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret, "Content-Type": "application/json"}
    if sender == "gitea":
        # Gitea sends GitHub's and Gogs' headers too; its own signature decides.
        return {"X-Gitea-Event": "push", "X-Gitea-Delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead473",
                "X-GitHub-Event": "push", "X-Gogs-Event": "push", "X-Gitea-Signature": digest,
                "Content-Type": "application/json"}
    raise AssertionError(sender)


EVENTS = {"github": github_push, "gitlab": gitlab_push, "gitea": gitea_push}


# -- the service ------------------------------------------------------------------------------------------
@contextmanager
def running(config_path: Path) -> Iterator[Any]:
    from syncd.service import Service

    service = Service(config_mod.load(config_path), embedder=HashEmbedder())
    service.start()
    loop = threading.Thread(target=service.run_forever, daemon=True)
    loop.start()
    try:
        yield service
    finally:
        service.stopping.set()
        loop.join(timeout=60)
        assert not loop.is_alive()


def request(url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
            method: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, code = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, code = exc.read(), exc.code
    try:
        return code, json.loads(raw) if raw else None
    except ValueError:
        return code, raw.decode(errors="replace")


def metric(service: Any, name: str, **labels: str) -> float:
    code, text = request(service.http.url + "/metrics")
    assert code == 200
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += float(sample.value)
    return total


def search_docs(service: Any, q: str) -> list[str]:
    code, data = request(service.http.url + f"/search?q={quote(q)}&k=5")
    assert code == 200, data
    return [r["doc_id"] for r in data["results"]]


class PollCounter:
    """Counts the connector's real polls (each one a fetch from the remote)."""

    def __init__(self, connector: Any) -> None:
        self.count = 0
        self._inner = connector.poll
        connector.poll = self

    def __call__(self) -> Any:
        self.count += 1
        return self._inner()


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    r = GitRepo(tmp_path / "repo")
    r.write("handbook.md", "# Handbook\n\nThe first page of the handbook.\n")
    r.commit("first")
    r.push()
    return r


@pytest.fixture
def git_config(tmp_path: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SYNCD_TEST_WEBHOOK_SECRET", SECRET)
    return write_config(tmp_path, [{"name": "docs", "type": "git", "url": repo.url, "branch": "main",
                                    "poll_interval": "1h", "webhook_secret_env": "SYNCD_TEST_WEBHOOK_SECRET",
                                    "acl": ["everyone"]}])


def settled(service: Any) -> bool:
    q = service.queue
    return service.ready() and not service.writer.polling("docs") and q.empty() and not any(q.in_flight.values())


def hook(service: Any, body: bytes, headers: dict[str, str], name: str = "docs") -> tuple[int, Any]:
    return request(service.http.url + f"/hooks/{name}", body=body, headers=headers, method="POST")


# -- signatures and branches --------------------------------------------------------------------------------
@pytest.mark.parametrize("sender", ["github", "gitlab", "gitea"])
def test_a_signed_push_event_starts_exactly_one_poll_and_the_push_is_searchable(
        sender: str, git_config: Path, repo: GitRepo) -> None:
    with running(git_config) as service:
        wait_for(lambda: settled(service), what="first sync")
        polls = PollCounter(service.runtime.connectors["docs"])
        before = repo.remote_head()
        repo.write("handbook.md", f"# Handbook\n\nPushed through a {sender} hook: zeppelin quasar marmalade.\n")
        after = repo.commit("second")
        repo.push()
        body = json.dumps(EVENTS[sender]("refs/heads/main", before, after)).encode()
        code, answer = hook(service, body, signed(sender, body))
        assert (code, answer) == (202, {"connector": "docs", "poll": "started"})
        wait_for(lambda: "handbook.md" in search_docs(service, "zeppelin quasar marmalade") and settled(service),
                 what="the pushed text searchable")
        time.sleep(0.5)  # nothing else runs after it
        assert polls.count == 1
        assert metric(service, "syncd_polls_total", connector="docs", trigger="hook") == 1
        assert metric(service, "syncd_hooks_total", connector="docs", sender=sender, outcome="started") == 1
        # Freshness is measured from the hook's arrival, per connector.
        assert metric(service, "syncd_freshness_seconds_count", connector="docs") >= 1


@pytest.mark.parametrize("sender", ["github", "gitlab", "gitea"])
def test_a_bad_signature_is_a_401_runs_nothing_and_is_counted(sender: str, git_config: Path, repo: GitRepo) -> None:
    with running(git_config) as service:
        wait_for(lambda: settled(service), what="first sync")
        polls = PollCounter(service.runtime.connectors["docs"])
        head = repo.remote_head()
        body = json.dumps(EVENTS[sender]("refs/heads/main", head, head)).encode()
        forged = signed(sender, body, secret="not-the-secret")
        assert hook(service, body, forged)[0] == 401
        # A valid signature of another body (a replayed header on a changed event) fails the same way.
        tampered = body.replace(b"refs/heads/main", b"refs/heads/mai\\u006e")
        if sender != "gitlab":  # GitLab's token does not sign the body
            assert hook(service, tampered, signed(sender, body))[0] == 401
        assert hook(service, body, {"Content-Type": "application/json"})[0] == 401  # no secret at all
        time.sleep(0.5)
        assert polls.count == 0
        assert metric(service, "syncd_polls_total", connector="docs", trigger="hook") == 0
        assert metric(service, "syncd_hooks_total", connector="docs", outcome="unauthorized") == (
            3 if sender != "gitlab" else 2)


@pytest.mark.parametrize("sender", ["github", "gitlab", "gitea"])
def test_a_push_to_another_branch_is_ignored(sender: str, git_config: Path, repo: GitRepo) -> None:
    with running(git_config) as service:
        wait_for(lambda: settled(service), what="first sync")
        polls = PollCounter(service.runtime.connectors["docs"])
        head = repo.remote_head()
        for ref in ("refs/heads/feature/draft", "refs/tags/v1.0", "refs/heads/main-old"):
            body = json.dumps(EVENTS[sender](ref, head, head)).encode()
            assert hook(service, body, signed(sender, body)) == (204, None), ref
        time.sleep(0.5)
        assert polls.count == 0
        assert metric(service, "syncd_hooks_total", connector="docs", sender=sender, outcome="ignored") == 3


def test_bad_requests_get_clear_answers_and_run_nothing(git_config: Path, repo: GitRepo) -> None:
    with running(git_config) as service:
        wait_for(lambda: settled(service), what="first sync")
        polls = PollCounter(service.runtime.connectors["docs"])
        body = b'{"ref": "refs/heads/main", '  # cut short
        code, answer = hook(service, body, signed("github", body))
        assert code == 400 and "unreadable body" in answer["error"]
        body = json.dumps({"before": ZERO}).encode()
        assert hook(service, body, signed("github", body)) == (400, {"error": "a push event without a ref"})
        # A GitHub ping (sent when the hook is created) is authentic and starts nothing.
        body = json.dumps({"zen": "Design for failure.", "hook_id": 1}).encode()
        assert hook(service, body, {**signed("github", body), "X-GitHub-Event": "ping"})[0] == 204
        # Unknown connector, and a body over the cap.
        code, answer = hook(service, b"{}", signed("github", b"{}"), name="nope")
        assert code == 404 and "nope" in answer["error"]
        service.http.max_hook_bytes = 1000
        big = json.dumps({**github_push("refs/heads/main", ZERO, ZERO), "padding": "x" * 2000}).encode()
        assert hook(service, big, signed("github", big))[0] == 413
        # GET on a hook is not a hook.
        assert request(service.http.url + "/hooks/docs")[0] == 404
        time.sleep(0.5)
        assert polls.count == 0
        assert metric(service, "syncd_hooks_total", connector="docs", outcome="malformed") == 2
        assert metric(service, "syncd_hooks_total", connector="docs", outcome="too_large") == 1


def test_a_connector_without_a_webhook_secret_takes_no_hooks(tmp_path: Path, repo: GitRepo) -> None:
    cfg = write_config(tmp_path, [{"name": "docs", "type": "git", "url": repo.url, "poll_interval": "1h"}])
    with running(cfg) as service:
        wait_for(lambda: settled(service), what="first sync")
        polls = PollCounter(service.runtime.connectors["docs"])
        code, answer = hook(service, b"", {"Authorization": "Bearer anything"})
        assert code == 404 and "webhook_secret_env" in answer["error"]
        time.sleep(0.3)
        assert polls.count == 0


def test_hooks_work_off_loopback_with_their_own_secret_and_every_other_path_keeps_the_token(
        tmp_path: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "tok-" + os.urandom(8).hex()
    monkeypatch.setenv("SYNCD_TEST_HTTP_TOKEN", token)
    monkeypatch.setenv("SYNCD_TEST_WEBHOOK_SECRET", SECRET)
    cfg = write_config(tmp_path, [{"name": "docs", "type": "git", "url": repo.url, "poll_interval": "1h",
                                   "webhook_secret_env": "SYNCD_TEST_WEBHOOK_SECRET", "acl": ["everyone"]}],
                       http={"bind": "0.0.0.0:0", "token_env": "SYNCD_TEST_HTTP_TOKEN"})
    with running(cfg) as service:
        url = service.http.url.replace("0.0.0.0", "127.0.0.1")
        auth = {"Authorization": f"Bearer {token}"}
        wait_for(lambda: request(url + "/readyz", headers=auth)[0] == 200 and not service.writer.polling("docs"),
                 what="ready")
        repo.write("handbook.md", "# Handbook\n\nOff loopback: heliotrope sextant.\n")
        repo.commit("third")
        repo.push()
        body = json.dumps(github_push("refs/heads/main", ZERO, repo.remote_head())).encode()
        # The forge sends no bearer token: its signature is enough.
        assert request(url + "/hooks/docs", body=body, headers=signed("github", body), method="POST")[0] == 202
        # The HTTP token is not a webhook secret, and the webhook secret opens no other path.
        assert request(url + "/hooks/docs", body=b"", headers=auth, method="POST")[0] == 401
        assert request(url + "/status", headers={"Authorization": f"Bearer {SECRET}"})[0] == 401
        assert request(url + "/status")[0] == 401
        assert request(url + "/metrics", method="POST", body=b"")[0] == 401
        wait_for(lambda: "handbook.md" in [r["doc_id"] for r in request(
            url + "/search?q=heliotrope+sextant&k=3", headers=auth)[1]["results"]], what="pushed text searchable")


# -- coalescing -----------------------------------------------------------------------------------------------
def _held_by_site(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[tracemalloc.StatisticDiff]:
    """What each allocating line holds more of after than before, most blocks first."""
    return sorted(after.compare_to(before, "lineno"), key=lambda d: d.count_diff, reverse=True)


def test_a_flood_of_a_thousand_hooks_in_a_second_makes_one_or_two_polls(
        git_config: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    # On a shared CI machine sending the thousand may take several seconds instead of one; the longest wait
    # of a queued poll is raised so the flood still counts as one burst however long sending it takes.
    from syncd.service import writer

    monkeypatch.setattr(writer, "REQUEST_MAX_WAIT_S", 60.0)
    # Memory is measured as what Python objects the process holds (tracemalloc), not its RSS: the RSS of a
    # test worker also counts LanceDB's native caches, which fill up to their configured bound as the polls'
    # commits make new versions to read, and malloc's arenas, neither of which follows the number of hooks.
    tracemalloc.start()
    with running(git_config) as service:
        wait_for(lambda: settled(service), what="first sync")
        # Warm-up: a first flood of the same size allocates what any flood needs once (worker threads, their
        # malloc arenas, the poll and search paths), so the figure below is what a second thousand hooks add.
        repo.write("warm-up.md", "# Warm-up\n\nA first push: tangerine sextant.\n")
        repo.commit("warm-up")
        repo.push()
        warm = json.dumps(github_push("refs/heads/main", ZERO, repo.remote_head())).encode()
        warm_headers = signed("github", warm)
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(lambda _: hook(service, warm, warm_headers), range(1000)))
        for _ in range(10):
            request(service.http.url + "/search?q=handbook&k=1")
        wait_for(lambda: "warm-up.md" in search_docs(service, "tangerine sextant") and settled(service)
                 and not service.writer.polling("docs"), what="the warm-up's push searchable")
        connector = service.runtime.connectors["docs"]
        polls = PollCounter(connector)
        polls_before = metric(service, "syncd_polls_total", connector="docs", trigger="hook")
        accepted_before = metric(service, "syncd_hooks_total", connector="docs", outcome="started") + metric(
            service, "syncd_hooks_total", connector="docs", outcome="queued")
        repo.write("handbook.md", "# Handbook\n\nFlooded: periwinkle astrolabe.\n")
        repo.commit("flood")
        repo.push()
        body = json.dumps(github_push("refs/heads/main", ZERO, repo.remote_head())).encode()
        headers = signed("github", body)
        gc.collect()
        held_before, threads_before = tracemalloc.take_snapshot(), threading.active_count()
        codes: list[int] = []
        peak_threads = 0
        probes: list[int] = []
        stop = threading.Event()

        def probe() -> None:
            # The daemon stays responsive: liveness and search answer throughout the flood.
            while not stop.is_set():
                probes.append(request(service.http.url + "/healthz")[0])
                probes.append(request(service.http.url + "/search?q=handbook&k=1")[0])

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=32) as pool:
            for code, _ in pool.map(lambda _: hook(service, body, headers), range(1000)):
                codes.append(code)
                peak_threads = max(peak_threads, threading.active_count())
        flood_s = time.monotonic() - started
        wait_for(lambda: "handbook.md" in search_docs(service, "periwinkle astrolabe") and settled(service),
                 what="the pushed text searchable")
        stop.set()
        prober.join(timeout=30)
        time.sleep(0.5)
        gc.collect()
        held = _held_by_site(held_before, tracemalloc.take_snapshot())
        tracemalloc.stop()
        held_bytes = sum(d.size_diff for d in held)
        print(f"flood: {len(codes)} hooks in {flood_s:.2f} s, {codes.count(202)} accepted, "
              f"{polls.count} poll(s), {len(probes)} probes answered, Python objects held "
              f"{held_bytes / 1024:+.0f} KiB, most by one line: {held[0]}")
        # Every hook was answered: accepted, or (past the server's waiting room) asked to retry.
        assert len(codes) == 1000 and set(codes) <= {202, 503} and codes.count(202) >= 1
        assert 1 <= polls.count <= 2, polls.count
        assert metric(service, "syncd_polls_total", connector="docs", trigger="hook") - polls_before == polls.count
        accepted = metric(service, "syncd_hooks_total", connector="docs", outcome="started") + metric(
            service, "syncd_hooks_total", connector="docs", outcome="queued")
        assert accepted - accepted_before == codes.count(202)
        assert probes and set(probes) == {200}
        # Bounded: no thread per hook, and memory does not follow the number of hooks: no line of code holds
        # an object per hook (a thousand more blocks) once the flood is over, and all it holds in all is less
        # than a hook's request buffer (8 KiB) for each of the thousand.
        assert peak_threads - threads_before <= 32 + 2
        assert held[0].count_diff < 1000, held[:5]
        assert held_bytes < 8 * 1000 * 1024 // 2, held[:5]
        # What the hooks were allowed to do left no residue: nothing queued, no poll in flight.
        assert not service.writer.polling("docs")


def test_a_hook_during_a_poll_queues_exactly_one_more(git_config: Path, repo: GitRepo) -> None:
    """A hook arriving while a poll fetches may describe a push that fetch missed: one more poll follows."""
    with running(git_config) as service:
        wait_for(lambda: settled(service), what="first sync")
        connector = service.runtime.connectors["docs"]
        gate = threading.Event()
        inside = threading.Event()
        inner = connector.poll
        count = 0

        def slow_poll() -> Any:
            nonlocal count
            count += 1
            if count == 1:
                inside.set()
                assert gate.wait(timeout=60)
            return inner()

        connector.poll = slow_poll
        body = json.dumps(github_push("refs/heads/main", ZERO, ZERO)).encode()
        assert hook(service, body, signed("github", body))[1]["poll"] == "started"
        assert inside.wait(timeout=30)
        # The push lands after the first poll's fetch began.
        repo.write("late.md", "# Late\n\nArrived mid-poll: tamarind obelisk.\n")
        repo.commit("late")
        repo.push()
        for _ in range(5):
            assert hook(service, body, signed("github", body))[1]["poll"] == "queued"
        gate.set()
        wait_for(lambda: "late.md" in search_docs(service, "tamarind obelisk") and settled(service),
                 what="the late push searchable")
        time.sleep(0.5)
        assert count == 2


def test_a_steady_stream_of_hooks_cannot_hold_the_queued_poll_back(
        git_config: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """The queued poll waits for the burst to end, but never longer than REQUEST_MAX_WAIT_S."""
    from syncd.service import writer

    # The quiet period is made longer than the stream's gaps can ever be on a loaded machine: only the
    # longest wait can start the queued polls.
    monkeypatch.setattr(writer, "REQUEST_SETTLE_S", 60.0)
    monkeypatch.setattr(writer, "REQUEST_MAX_WAIT_S", 1.0)
    with running(git_config) as service:
        wait_for(lambda: settled(service), what="first sync")
        polls = PollCounter(service.runtime.connectors["docs"])
        body = json.dumps(github_push("refs/heads/main", ZERO, ZERO)).encode()
        headers = signed("github", body)
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            assert hook(service, body, headers)[0] == 202
            time.sleep(0.05)
        during = polls.count
        assert during >= 2, during  # the first, then queued ones at most a second after they were asked for
        wait_for(lambda: not service.writer.polling("docs"), timeout=60, what="the last poll done")
        assert polls.count <= during + 1


# -- the checks alone ----------------------------------------------------------------------------------------
def test_check_reads_plain_notifications_as_a_post_receive_hook_sends_them() -> None:
    target = hooks.Target(kind="git", secret=SECRET, branch="main")
    bearer = {"Authorization": f"Bearer {SECRET}", "Content-Type": "text/plain"}
    main = f"{ZERO} {'a' * 40} refs/heads/main\n".encode()
    other = f"{ZERO} {'a' * 40} refs/heads/draft\n{'b' * 40} {'c' * 40} refs/tags/v2\n".encode()
    assert hooks.check(target, bearer, main).outcome == "push"
    assert hooks.check(target, bearer, other + main).outcome == "push"
    assert hooks.check(target, bearer, other).outcome == "ignored"
    assert hooks.check(target, bearer, b"").outcome == "push"  # nothing said: poll
    assert hooks.check(target, {"Authorization": "Bearer wrong"}, main).outcome == "unauthorized"
    assert hooks.check(target, {"authorization": f"bearer {SECRET}"}, main).outcome == "unauthorized"
    as_json = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    assert hooks.check(target, as_json, b'{"ref": "refs/heads/draft"}').outcome == "ignored"
    assert hooks.check(target, as_json, b'{"ref": ').outcome == "malformed"
    # A form-encoded GitHub delivery carries the event in `payload`, signed as sent.
    body = b"payload=" + quote(json.dumps(github_push("refs/heads/main", ZERO, ZERO))).encode()
    form = {**signed("github", body), "Content-Type": "application/x-www-form-urlencoded"}
    assert hooks.check(target, form, body).outcome == "push"


def test_check_reads_bitbucket_pushes_cloud_and_data_center() -> None:
    target = hooks.Target(kind="git", secret=SECRET, branch="main")

    def sign(body: bytes, key: str) -> dict[str, str]:
        digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        return {"X-Event-Key": key, "X-Hub-Signature": f"sha256={digest}", "Content-Type": "application/json",
                "X-Request-UUID": "afe3ae1c-9bdb-4d9e-8f2c-a0d7ee4a4e44"}

    def cloud(branch: str) -> bytes:
        """Bitbucket Cloud's repo:push (support.atlassian.com, event payloads: push), abridged."""
        return json.dumps({"actor": {"type": "user", "display_name": "Emma"},
                           "repository": {"type": "repository", "full_name": "team/docs"},
                           "push": {"changes": [{"new": {"type": "branch", "name": branch,
                                                         "target": {"type": "commit", "hash": "a" * 40}},
                                                 "old": {"type": "branch", "name": branch,
                                                         "target": {"type": "commit", "hash": "b" * 40}},
                                                 "created": False, "forced": False, "closed": False}]}}).encode()

    def data_center(branch: str) -> bytes:
        """Bitbucket Data Center's repo:refs_changed (confluence.atlassian.com, event payload: push), abridged."""
        return json.dumps({"eventKey": "repo:refs_changed", "date": "2026-11-30T09:45:32+1000",
                           "actor": {"name": "admin", "id": 1},
                           "repository": {"slug": "docs", "id": 84, "name": "docs"},
                           "changes": [{"ref": {"id": f"refs/heads/{branch}", "displayId": branch,
                                                "type": "BRANCH"}, "refId": f"refs/heads/{branch}",
                                        "fromHash": "b" * 40, "toHash": "a" * 40, "type": "UPDATE"}]}).encode()

    for body, key in ((cloud("main"), "repo:push"), (data_center("main"), "repo:refs_changed")):
        assert hooks.check(target, sign(body, key), body).outcome == "push"
        assert hooks.check(target, {**sign(body, key), "X-Hub-Signature": "sha256=" + "0" * 64},
                           body).outcome == "unauthorized"
    for body, key in ((cloud("draft"), "repo:push"), (data_center("draft"), "repo:refs_changed")):
        assert hooks.check(target, sign(body, key), body).outcome == "ignored"
    ping = b'{"test": true}'
    assert hooks.check(target, sign(ping, "diagnostics:ping"), ping).outcome == "ignored"


def test_check_reads_confluence_page_events_and_names_the_page() -> None:
    target = hooks.Target(kind="confluence", secret=SECRET)
    event = {"timestamp": 1764504000000, "event": "page_updated", "userKey": "ff8080817d5b3b5c017d5b3c5e8e0000",
             "page": {"id": 98305, "spaceKey": "DOCS", "title": "Runbook", "version": 7,
                      "creatorKey": "ff8080817d5b3b5c017d5b3c5e8e0000", "creationDate": 1764400000000,
                      "lastModificationDate": 1764504000000}}
    body = json.dumps(event).encode()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    for signature in (f"sha256={digest}", digest):
        verdict = hooks.check(target, {"X-Hub-Signature": signature, "Content-Type": "application/json"}, body)
        assert (verdict.outcome, verdict.hints) == ("push", ("98305",))
    assert hooks.check(target, {"X-Hub-Signature": "sha256=" + "0" * 64}, body).outcome == "unauthorized"
    space = json.dumps({"event": "space_created", "space": {"key": "NEW"}}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), space, hashlib.sha256).hexdigest()
    assert hooks.check(target, {"X-Hub-Signature": signature}, space).outcome == "ignored"
    # A forge's push is authentic but means nothing to a Confluence connector.
    push = json.dumps(github_push("refs/heads/main", ZERO, ZERO)).encode()
    assert hooks.check(target, signed("github", push), push).outcome == "ignored"

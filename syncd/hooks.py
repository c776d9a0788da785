"""Push hooks (``POST /hooks/{connector}``): who sent one, whether its secret is right, and whether it asks
for a poll.

A hook never carries content into the index: it only starts the connector's normal poll (fetch, diff
against the last synced commit, sync). So a forged or replayed hook can at most cause an extra poll, and
a burst of them one or two (the writer coalesces requests). What is read from a body is only whether the
event concerns the connector (the branch of a push; for Confluence the page id, which the connector then
reads itself from the REST API).

Senders, told apart by their headers, checked in this order:

* Gitea / Forgejo: ``X-Gitea-Signature`` (or ``X-Forgejo-Signature``), the hex HMAC-SHA256 of the body;
  event in ``X-Gitea-Event`` / ``X-Forgejo-Event``. (Gitea also sends GitHub's headers, so it is first.)
* GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``; event in ``X-GitHub-Event``
  (``ping`` is answered and ignored). A form-encoded delivery (``payload=...``) is read too.
* GitLab: ``X-Gitlab-Token: <the secret>``; event in ``X-Gitlab-Event`` (``Push Hook``).
* Bitbucket Cloud and Data Center: ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body>`` with
  ``X-Event-Key`` (``repo:push``, ``repo:refs_changed``).
* Confluence Data Center: ``X-Hub-Signature`` without ``X-Event-Key``, the HMAC-SHA256 of the body (``sha256=<hex>`` or bare
  hex); the event is the body's ``event`` (``page_created``, ``page_updated``, ``page_removed``...).
* Anything else (a ``post-receive`` hook): ``Authorization: Bearer <the secret>``. The body may be empty,
  the lines a ``post-receive`` hook reads on its standard input (``<old> <new> <ref>``), or JSON with a
  ``ref``; when it names refs, a push that touches none of the connector's branch is ignored.

Every secret is compared in constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs

Outcome = Literal["push", "ignored", "unauthorized", "malformed"]

MAX_HINTS = 64
"""Page ids one event may name; an event naming more is read as a plain 'something changed'."""
_PAGE_ID = re.compile(r"[1-9][0-9]{0,18}")


@dataclass(frozen=True)
class Verdict:
    """What a hook asks for. ``push``: poll now; ``ignored``: authentic, but nothing of this connector;
    ``unauthorized``: no valid secret (nothing runs); ``malformed``: authentic, but the body is unreadable."""

    outcome: Outcome
    sender: str
    """github, gitlab, gitea, confluence or plain."""
    reason: str = ""
    hints: tuple[str, ...] = ()
    """Document ids the event names (Confluence page ids), re-read by the poll it starts."""


@dataclass(frozen=True)
class Target:
    """What a connector takes hooks for."""

    kind: str
    """The connector type: git, confluence, mediawiki..."""
    secret: str
    branch: str | None = None
    """For git: the branch it indexes; pushes to other refs are ignored."""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, found in headers.items():
            if key.lower() == lowered:
                return found
    return value


def _hmac_matches(secret: str, body: bytes, signature: str, *, prefix: str = "") -> bool:
    expected = prefix + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature.strip().lower().encode(), expected.encode())


def _json_body(body: bytes, content_type: str | None) -> Any:
    """The event as JSON; ValueError when it is not. A form-encoded delivery holds it in ``payload``."""
    if (content_type or "").split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        form = parse_qs(body.decode("utf-8", "strict"), strict_parsing=False)
        if "payload" not in form:
            raise ValueError("a form-encoded delivery without a payload field")
        body = form["payload"][0].encode()
    return json.loads(body)


def check(target: Target, headers: Mapping[str, str], body: bytes) -> Verdict:
    """Authenticate a hook and say what it asks for. Never raises on bad input."""
    try:
        return _check(target, headers, body)
    except (ValueError, UnicodeDecodeError) as exc:
        # Only reached after authentication: an unauthenticated body is never parsed.
        return Verdict("malformed", "unknown", f"unreadable body: {exc}")


def _check(target: Target, headers: Mapping[str, str], body: bytes) -> Verdict:
    secret = target.secret
    content_type = _header(headers, "Content-Type")
    gitea = _header(headers, "X-Gitea-Signature") or _header(headers, "X-Forgejo-Signature")
    if gitea is not None:
        if not _hmac_matches(secret, body, gitea):
            return Verdict("unauthorized", "gitea", "X-Gitea-Signature does not match the body")
        event = _header(headers, "X-Gitea-Event") or _header(headers, "X-Forgejo-Event") or ""
        return _push(target, "gitea", event.strip().lower() == "push", event, body, content_type)
    github = _header(headers, "X-Hub-Signature-256")
    if github is not None:
        if not _hmac_matches(secret, body, github, prefix="sha256="):
            return Verdict("unauthorized", "github", "X-Hub-Signature-256 does not match the body")
        event = _header(headers, "X-GitHub-Event") or ""
        return _push(target, "github", event.strip().lower() == "push", event, body, content_type)
    gitlab = _header(headers, "X-Gitlab-Token")
    if gitlab is not None:
        if not hmac.compare_digest(gitlab.encode(), secret.encode()):
            return Verdict("unauthorized", "gitlab", "X-Gitlab-Token is not the connector's webhook secret")
        event = _header(headers, "X-Gitlab-Event") or ""
        return _push(target, "gitlab", event.strip().lower() in ("push hook", "system hook"), event, body,
                     content_type, gitlab=True)
    bitbucket = _header(headers, "X-Event-Key")
    signature = _header(headers, "X-Hub-Signature")
    if bitbucket is not None and signature is not None:
        signature = signature.strip()
        prefix = "sha256=" if signature.lower().startswith("sha256=") else ""
        if not _hmac_matches(secret, body, signature, prefix=prefix):
            return Verdict("unauthorized", "bitbucket", "X-Hub-Signature does not match the body")
        return _bitbucket(target, bitbucket.strip(), body, content_type)
    confluence = signature
    if confluence is not None:
        signature = confluence.strip()
        prefix = "sha256=" if signature.lower().startswith("sha256=") else ""
        if not _hmac_matches(secret, body, signature, prefix=prefix):
            return Verdict("unauthorized", "confluence", "X-Hub-Signature does not match the body")
        return _confluence(target, body, content_type)
    authorization = _header(headers, "Authorization")
    if authorization is not None:
        if not hmac.compare_digest(authorization.strip().encode(), f"Bearer {secret}".encode()):
            return Verdict("unauthorized", "plain", "the bearer secret is not the connector's webhook secret")
        return _plain(target, body, content_type)
    return Verdict("unauthorized", "unknown", "no signature, token or bearer secret")


def _push(target: Target, sender: str, is_push: bool, event: str, body: bytes, content_type: str | None,
          *, gitlab: bool = False) -> Verdict:
    if target.kind != "git":
        return Verdict("ignored", sender, f"a {sender} event does not concern a {target.kind} connector")
    if not is_push:
        return Verdict("ignored", sender, f"event {event.strip() or '(none)'!r} is not a push")
    data = _json_body(body, content_type)
    if not isinstance(data, dict):
        return Verdict("malformed", sender, "the event is not a JSON object")
    if gitlab and data.get("object_kind") not in (None, "push"):
        return Verdict("ignored", sender, f"object_kind {data.get('object_kind')!r} is not a push")
    ref = data.get("ref")
    if not isinstance(ref, str):
        return Verdict("malformed", sender, "a push event without a ref")
    return _by_ref(target, sender, [ref])


def _by_ref(target: Target, sender: str, refs: list[str]) -> Verdict:
    if target.branch is None or f"refs/heads/{target.branch}" in refs:
        return Verdict("push", sender)
    return Verdict("ignored", sender, f"push to {', '.join(refs[:3])}, not refs/heads/{target.branch}")


def _bitbucket(target: Target, event: str, body: bytes, content_type: str | None) -> Verdict:
    """Bitbucket Cloud (``repo:push``: ``push.changes[].new``/``old`` with a name and type) and Data Center
    (``repo:refs_changed``: ``changes[].ref.id``)."""
    if target.kind != "git":
        return Verdict("ignored", "bitbucket", f"a bitbucket event does not concern a {target.kind} connector")
    if event not in ("repo:push", "repo:refs_changed"):
        return Verdict("ignored", "bitbucket", f"event {event!r} is not a push")
    data = _json_body(body, content_type)
    if not isinstance(data, dict):
        return Verdict("malformed", "bitbucket", "the event is not a JSON object")
    refs: list[str] = []
    push = data.get("push")
    changes = push.get("changes") if isinstance(push, dict) else data.get("changes")
    for change in changes if isinstance(changes, list) else []:
        if not isinstance(change, dict):
            continue
        ref = change.get("ref")
        if isinstance(ref, dict) and isinstance(ref.get("id"), str):
            refs.append(ref["id"])
        for side in ("new", "old"):
            tip = change.get(side)
            if isinstance(tip, dict) and isinstance(tip.get("name"), str):
                kind = {"branch": "heads", "named_branch": "heads", "tag": "tags"}.get(str(tip.get("type")), "heads")
                refs.append(f"refs/{kind}/{tip['name']}")
    if not refs:
        return Verdict("malformed", "bitbucket", "a push event without the refs it changed")
    return _by_ref(target, "bitbucket", refs)


def _plain(target: Target, body: bytes, content_type: str | None) -> Verdict:
    """A plain notification: empty, post-receive's stdin lines, or JSON with a ref."""
    text = body.strip()
    if not text:
        return Verdict("push", "plain")
    if (content_type or "").split(";")[0].strip().lower() == "application/json":
        data = json.loads(text)
        if not isinstance(data, dict):
            return Verdict("malformed", "plain", "the notification is not a JSON object")
        ref = data.get("ref")
        if ref is None or target.kind != "git":
            return Verdict("push", "plain")
        if not isinstance(ref, str):
            return Verdict("malformed", "plain", "ref is not a string")
        return _by_ref(target, "plain", [ref])
    refs = []
    for line in text.decode("utf-8").splitlines():
        parts = line.split()
        if len(parts) == 3:
            refs.append(parts[2])
    if not refs or target.kind != "git":
        return Verdict("push", "plain")
    return _by_ref(target, "plain", refs)


def _confluence(target: Target, body: bytes, content_type: str | None) -> Verdict:
    if target.kind != "confluence":
        return Verdict("ignored", "confluence", f"a Confluence event does not concern a {target.kind} connector")
    data = _json_body(body, content_type)
    if not isinstance(data, dict):
        return Verdict("malformed", "confluence", "the event is not a JSON object")
    event = data.get("event")
    if not isinstance(event, str):
        return Verdict("malformed", "confluence", "an event without its name ('event')")
    if not event.startswith("page_"):
        return Verdict("ignored", "confluence", f"event {event!r} does not change a page")
    page = data.get("page")
    hints: tuple[str, ...] = ()
    if isinstance(page, dict):
        pid = page.get("id")
        if isinstance(pid, int | str) and not isinstance(pid, bool) and _PAGE_ID.fullmatch(str(pid)):
            hints = (str(pid),)
    return Verdict("push", "confluence", hints=hints[:MAX_HINTS])

"""Confluence connector: pages of chosen spaces through the REST API (Cloud and Data Center, v1).

* Listing: ``GET /rest/api/content?spaceKey=K&type=page&status=current&expand=version``, followed through
  ``_links.next``. ``doc_id`` is the page id (digits only; stable across renames and moves), the
  fingerprint and the ``revision`` its ``version.number``, the ``uri`` its web UI link.
* Content: ``body.storage`` (XHTML with ``ac:``/``ri:`` macros), turned into plain HTML here (code and
  no-format macros become ``<pre>``, macro parameters are dropped) and rendered by syncd's HTML extractor,
  which keeps headings for chunking. Reads fetch 50 pages per request (CQL ``id in (...)``) ahead of the
  engine (in listing or poll order), so pages are rarely fetched one by one; the next listing or poll drops
  what was fetched ahead and not read.
* Incremental: CQL ``lastmodified >= now("-Nm")`` with N reaching an overlap window before the cursor. CQL
  compares dates in minutes and in the searching user's time zone; a relative date avoids the time zone
  and the overlap covers the minutes. Results already handled (page id and version) are skipped.
* Deletions and moves to the trash (or out of the configured spaces) are invisible to CQL: every
  ``reconcile_interval`` a poll answers with a full id listing, which the engine compares with the index
  (behind its mass-deletion guard).
* A 429 or 503 is retried after its ``Retry-After``; the cursor never passes a page that failed to read.
* Who may read a page (``connectors.confluence_permissions``): the space's view permission intersected with
  the read restrictions of the page and of its ancestors. Restrictions and space permissions change no page
  version and CQL cannot search for them, so every poll lists the spaces' pages with their restrictions and
  ancestors (one listing per space, ``expand=restrictions.read...,ancestors``) and reads the space
  permissions; a page whose readers changed is read again (its rows get the new ACL, nothing is embedded).
  The readers are part of the fingerprint too, so the reconcile listing catches what a poll missed. Not
  capturing at all when the connector's ``acl`` is configured.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any, Literal

import httpx
from pydantic import SecretStr, field_validator

from connectors import confluence_permissions as perms
from connectors._http import PoliteClient, ReadAhead, RemoteUnavailable, Retryable
from connectors.base import Connector, ConnectorContext
from syncd import __version__
from syncd.config import Duration, PushConfig, resolve_secret
from syncd.errors import ConnectorError, DocumentGone, DocumentUnavailable, RootUnavailable
from syncd.logs import get_logger
from syncd.models import Change, DocumentRef, SourceDocument
from syncd.state import read_json, write_json_atomic

log = get_logger("syncd.confluence")

CURSOR_VERSION = 1
_CACHE_TTL = 120.0
_MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError)
"""What reading an answer of valid JSON but unexpected shape raises."""
_PAGE_ID = re.compile(r"[1-9][0-9]{0,18}")
"""A page id as the listing yields it: ASCII digits without a leading zero. Any other spelling (a query, a
fragment, a path, leading zeros) would reach the same page under a second id."""


_RESTRICTIONS = "restrictions.read.restrictions.user,restrictions.read.restrictions.group"
_READ_EXPAND = f"body.storage,version,space,ancestors,{_RESTRICTIONS}"


def is_page_id(doc_id: str) -> bool:
    """Whether a doc id can name a Confluence page: a positive 64-bit id written as the listing writes it."""
    return _PAGE_ID.fullmatch(doc_id) is not None and int(doc_id) < 2**63


class ConfluenceConfig(PushConfig):
    type: Literal["confluence"]
    base_url: str
    """Site URL: https://example.atlassian.net/wiki (Cloud) or https://confluence.example.org (Data Center)."""
    spaces: tuple[str, ...]
    """Space keys to index."""
    token_env: str
    """Environment variable holding the API token (Cloud) or personal access token (Data Center)."""
    username_env: str | None = None
    """Environment variable holding the account e-mail (Cloud: basic auth with the API token); none sends
    the token as a bearer token (Data Center personal access token)."""
    poll_interval: Duration = 60.0
    """How often CQL is asked for pages modified since the cursor."""
    reconcile_interval: Duration = 3600.0
    """How often the full id listing runs to find deleted, trashed and moved-away pages."""
    overlap: Duration = 600.0
    """How far before the cursor each search reaches; pages already handled at their version are skipped."""
    request_rate: float = 5.0
    """Requests per second at most (0 = unlimited)."""
    timeout: Duration = 30.0
    """Per-request timeout."""
    max_retries: int = 5
    """Retries of a failed request (5xx, 429, timeout) before giving up on it."""
    max_backoff: Duration = 60.0
    """Longest exponential-backoff wait between retries (a Retry-After header is honoured as sent)."""
    page_size: int = 50
    """Results per request (listing and search)."""

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("spaces")
    @classmethod
    def _spaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(not s or '"' in s for s in value):
            raise ValueError("must list at least one space key")
        return value

    @field_validator("page_size")
    @classmethod
    def _page_size(cls, value: int) -> int:
        if not 1 <= value <= 200:
            raise ValueError("must be between 1 and 200")
        return value

    @field_validator("request_rate", "max_retries")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be >= 0")
        return value


def _parse_when(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def storage_to_html(title: str, storage: str) -> str:
    """Confluence storage XHTML as plain HTML the extractor understands (headings, paragraphs, lists,
    tables, code blocks), with the page title as the document title."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(storage, "html.parser")
    for param in soup.find_all(["ac:parameter", "ac:placeholder"]):
        param.decompose()
    for body in soup.find_all("ac:plain-text-body"):
        pre = soup.new_tag("pre")
        pre.string = body.get_text()
        body.replace_with(pre)
    for link in soup.find_all("ac:link"):
        label = link.find("ac:link-body") or link.find("ac:plain-text-link-body")
        target = link.find(["ri:page", "ri:attachment", "ri:user", "ri:space"])
        text = label.get_text() if label is not None else (
            (target.get("ri:content-title") or target.get("ri:filename") or "") if target is not None else "")
        link.replace_with(str(text))
    for tag in soup.find_all(lambda t: t.name is not None and ":" in t.name):
        tag.unwrap()
    page = BeautifulSoup("<html><head><title></title></head><body></body></html>", "html.parser")
    assert page.title is not None and page.body is not None
    page.title.string = title
    page.body.append(soup)
    return str(page)


def _json_answer(response: httpx.Response) -> None:
    """A 200 whose body is not JSON was garbled or cut short on the way: worth another try, then an error."""
    if response.status_code != 200:
        return
    try:
        response.json()
    except ValueError:
        raise Retryable(f"{response.request.url.path} answered 200 with a body that is not JSON") from None


class ConfluenceConnector(Connector):
    type_name = "confluence"
    config_model = ConfluenceConfig

    def __init__(self, config: ConfluenceConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        token = SecretStr(resolve_secret(config.token_env, key=f"connectors.{config.name}.token_env") or "")
        auth: httpx.Auth | None = None
        headers = {"User-Agent": f"syncd/{__version__}", "Accept": "application/json"}
        if config.username_env is not None:
            user = resolve_secret(config.username_env, key=f"connectors.{config.name}.username_env") or ""
            auth = httpx.BasicAuth(user, token.get_secret_value())
        else:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        self.http = PoliteClient(name=config.name, headers=headers, rate=config.request_rate,
                                 timeout=config.timeout, max_retries=int(config.max_retries),
                                 max_backoff=config.max_backoff)
        if auth is not None:
            self.http.client.auth = auth
        self._ahead: ReadAhead[dict[str, Any]] = ReadAhead(_CACHE_TTL)
        self._order: dict[str, int] = {}
        self._order_list: list[str] = []
        self._single: set[str] = set()
        self._failed: set[str] = set()
        self._pending: dict[str, Any] | None = None
        self._listed: dict[str, float] = {}
        """id:version -> modified time of the pages the last full listing saw (handled by that reconcile)."""
        self.cursor_path = context.state_dir / "cursor.json"
        self._capture = config.acl is None
        """Whether permissions are read from Confluence (a configured ``acl`` replaces them)."""
        self._spaces_readers: dict[str, perms.Readers | str] = {}
        """Space key -> who may view it, or why that is unknown; read again by every listing and poll."""
        self._restriction: dict[str, perms.Readers | None] = {}
        """Content id -> its read restriction (None: unrestricted), as the last listing or a read found it."""
        self._members: dict[str, frozenset[str]] = {}
        self._acls: dict[str, str] = {}
        """Page id -> readers' hash, as the last listing or poll computed them (kept in the cursor)."""

    # -- the API ---------------------------------------------------------------------------------------
    def _get(self, url: str, params: dict[str, Any] | None = None, *, refusal_ok: bool = False) -> httpx.Response:
        """GET an API path; a 401 or 403 is the token refused (ConnectorError) unless ``refusal_ok``: an
        answer about permissions the token's user may not see is that page's problem, not the source's."""
        if not url.startswith(("http://", "https://")):
            url = self.cfg.base_url + url
        response = self.http.request("GET", url, params=params, check=_json_answer)
        if response.status_code in (401, 403) and not (refusal_ok and response.status_code == 403):
            raise ConnectorError(f"Confluence refused the token (HTTP {response.status_code})", connector=self.name)
        return response

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every result of a paginated endpoint, following ``_links.next``."""
        url: str | None = path
        query: dict[str, Any] | None = params
        while url:
            response = self._get(url, query)
            if response.status_code != 200:
                raise ConnectorError(f"{url} answered HTTP {response.status_code}", connector=self.name)
            data = response.json()
            yield from data.get("results", [])
            links = data.get("_links", {})
            nxt = links.get("next")
            if not nxt:
                return
            base = links.get("base") or self.cfg.base_url
            url = nxt if nxt.startswith(("http://", "https://")) else base.rstrip("/") + nxt
            query = None  # the next link carries every parameter

    def _failure(self, exc: RemoteUnavailable | ConnectorError, what: str) -> ConnectorError:
        if isinstance(exc, RemoteUnavailable) and exc.transport:
            return RootUnavailable(f"Confluence at {self.cfg.base_url} unreachable while {what}: {exc}",
                                   connector=self.name)
        return ConnectorError(f"Confluence at {self.cfg.base_url} failed while {what}: {exc}", connector=self.name)

    def check_available(self) -> None:
        """Raises RootUnavailable when Confluence does not answer (the engine then deletes nothing)."""
        try:
            response = self._get("/rest/api/space", {"spaceKey": self.cfg.spaces[0], "limit": 1})
        except (RemoteUnavailable, ConnectorError) as exc:
            raise RootUnavailable(f"Confluence is not answering: {exc}", connector=self.name) from None
        if response.status_code != 200:
            raise RootUnavailable(f"Confluence answered HTTP {response.status_code}", connector=self.name)

    # -- permissions -----------------------------------------------------------------------------------
    def _forget_permissions(self) -> None:
        """A listing or a poll starts: space permissions, restrictions and group members are read afresh."""
        self._spaces_readers.clear()
        self._restriction.clear()
        self._members.clear()

    def _space_readers(self, space: str) -> perms.Readers | str:
        """Who may view ``space``, or why that cannot be told."""
        if space in self._spaces_readers:
            return self._spaces_readers[space]
        key = urllib.parse.quote(space, safe="")
        found: perms.Readers | str
        try:
            response = self._get(f"/rest/api/space/{key}", {"expand": "permissions"}, refusal_ok=True)
            if response.status_code == 200 and "permissions" in response.json():
                found = perms.parse_space_permissions(response.json())
            else:
                # Data Center answers the space without permissions: its own endpoint lists them.
                response = self._get(f"/rest/api/space/{key}/permissions", refusal_ok=True)
                if response.status_code != 200:
                    raise perms.Undetermined(f"/rest/api/space/{key}/permissions answered HTTP {response.status_code}")
                found = perms.parse_dc_space_permissions(response.json())
        except (RemoteUnavailable, ConnectorError, perms.Undetermined) as exc:
            found = f"who may view space {space} is unknown: {exc}"
        self._spaces_readers[space] = found
        return found

    def _restriction_of(self, content_id: str) -> perms.Readers | None:
        """The read restriction of a page (None: unrestricted); Undetermined when Confluence does not say."""
        if content_id in self._restriction:
            return self._restriction[content_id]
        path = f"/rest/api/content/{urllib.parse.quote(content_id, safe='')}/restriction/byOperation/read"
        try:
            response = self._get(path, {"expand": "restrictions.user,restrictions.group"}, refusal_ok=True)
        except (RemoteUnavailable, ConnectorError) as exc:
            raise perms.Undetermined(f"{path}: {exc}") from None
        if response.status_code != 200:
            raise perms.Undetermined(f"{path} answered HTTP {response.status_code}")
        found = perms.parse_restriction(response.json())
        self._restriction[content_id] = found
        return found

    def _group_members(self, group: str) -> frozenset[str]:
        """The users of ``group`` (none when Confluence does not list them: users are then left out)."""
        if group not in self._members:
            found: frozenset[str] = frozenset()
            # Data Center and Server name the group in the path; Cloud's current form takes it as a parameter.
            for path, params in ((f"/rest/api/group/{urllib.parse.quote(group, safe='')}/member", {"limit": 200}),
                                 ("/rest/api/group/member", {"name": group, "limit": 200})):
                try:
                    found = perms.names(self._pages(path, params))
                    break
                except (RemoteUnavailable, ConnectorError, *_MALFORMED):
                    continue
            else:
                log.warning("confluence.group_members_unknown", connector=self.name, group=group)
            self._members[group] = found
        return self._members[group]

    def _remember_restriction(self, content: dict[str, Any]) -> None:
        """Keep the read restriction a content answer carries (expanded), if it carries a readable one."""
        read = ((content.get("restrictions") or {}).get("read")) if isinstance(content, dict) else None
        if read is None:
            return
        try:
            self._restriction[str(content["id"])] = perms.parse_restriction(read)
        except perms.Undetermined:
            pass  # asked again from the restriction endpoint when the page's readers are computed

    def _page_acl(self, space: str, chain: list[str]) -> tuple[tuple[str, ...] | None, str]:
        """Who may read the page whose ancestors and itself are ``chain`` (root first), or (None, why)."""
        if not self._capture:
            return None, ""
        viewers = self._space_readers(space)
        if isinstance(viewers, str):
            return None, viewers
        try:
            restrictions = [self._restriction_of(cid) for cid in chain]
        except (perms.Undetermined, *_MALFORMED) as exc:
            return None, f"the read restrictions of page {chain[-1]} or an ancestor are unknown: {exc}"
        return perms.page_acl(viewers, restrictions, self._group_members), ""

    @staticmethod
    def _acl_hash(acl: tuple[str, ...] | None) -> str:
        text = "\n".join(acl) if acl is not None else "?"
        return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()

    def _fingerprint(self, number: object, acl: tuple[str, ...] | None) -> str:
        # Who may read a page is part of its fingerprint: the reconcile listing then reads a page whose
        # readers changed again (its rows get the new ACL, nothing is embedded).
        return f"{number}:{self._acl_hash(acl)}" if self._capture else str(number)

    def _sweep(self) -> list[tuple[dict[str, Any], str]]:
        """Every current page of the configured spaces with its version, ancestors and read restriction
        (remembered), and its space key."""
        self._forget_permissions()
        expand = f"version,ancestors,{_RESTRICTIONS}" if self._capture else "version"
        out: list[tuple[dict[str, Any], str]] = []
        for space in self.cfg.spaces:
            for page in self._pages("/rest/api/content", {"spaceKey": space, "type": "page", "status": "current",
                                                          "expand": expand, "limit": self.cfg.page_size}):
                out.append((page, space))
                self._remember_restriction(page)
        return out

    def _chain(self, page: dict[str, Any]) -> list[str]:
        return [str(a["id"]) for a in page.get("ancestors") or [] if isinstance(a, dict) and "id" in a] + [str(page["id"])]

    def _swept_acls(self, pages: list[tuple[dict[str, Any], str]]) -> dict[str, tuple[str, ...] | None]:
        return {str(page["id"]): self._page_acl(space, self._chain(page))[0] for page, space in pages}

    # -- listing ---------------------------------------------------------------------------------------
    def list_documents(self) -> Iterator[DocumentRef]:
        refs: list[DocumentRef] = []
        self._listed = {}
        try:
            pages = self._sweep()
            acls = self._swept_acls(pages)
        except (RemoteUnavailable, ConnectorError) as exc:
            raise self._failure(exc, "listing pages") from None
        self._acls = {pid: self._acl_hash(acl) for pid, acl in acls.items()}
        for page, _ in pages:
            pid = str(page["id"])
            refs.append(DocumentRef(doc_id=pid, fingerprint=self._fingerprint(page["version"]["number"], acls[pid])))
            when = page["version"].get("when")
            if when:
                self._listed[f"{pid}:{page['version']['number']}"] = _parse_when(when)
        self._ahead.forget()
        self._plan([r.doc_id for r in refs])
        return iter(refs)

    def _plan(self, ids: list[str]) -> None:
        self._order_list = list(dict.fromkeys(ids))
        self._order = {d: i for i, d in enumerate(self._order_list)}
        self._single.clear()

    # -- reading ---------------------------------------------------------------------------------------
    def _space_cql(self) -> str:
        return "space in (" + ",".join(f'"{s}"' for s in self.cfg.spaces) + ")"

    def _fetch_batch(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        cql = f"type=page AND id in ({','.join(ids)})"
        return {str(p["id"]): p for p in self._pages("/rest/api/content/search", {
            "cql": cql, "expand": _READ_EXPAND, "limit": len(ids)})}

    def _fetch_one(self, doc_id: str) -> dict[str, Any] | None:
        response = self._get(f"/rest/api/content/{urllib.parse.quote(doc_id, safe='')}",
                             {"expand": _READ_EXPAND})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ConnectorError(f"page {doc_id}: HTTP {response.status_code}", connector=self.name)
        return dict(response.json())

    def read(self, doc_id: str) -> SourceDocument:
        if not is_page_id(doc_id):
            raise DocumentGone("not-a-page-id", doc_id=doc_id, connector=self.name,
                               detail="a Confluence doc id is a page id: digits only")
        try:
            page = self._read_page(doc_id)
        except DocumentUnavailable:
            self._failed.add(doc_id)
            raise
        self._failed.discard(doc_id)
        return self._document(doc_id, page)

    def _read_page(self, doc_id: str) -> dict[str, Any] | None:
        cached = self._ahead.take(doc_id)
        if cached is not None:
            return cached
        if doc_id in self._order and doc_id not in self._single:
            start = self._order[doc_id]
            batch = [doc_id] + [d for d in self._order_list[start + 1:]
                                if d not in self._ahead and d not in self._single and is_page_id(d)][:self.cfg.page_size - 1]
            if len(batch) > 1:
                epoch = self._ahead.epoch
                try:
                    pages = self._fetch_batch(batch)
                except (RemoteUnavailable, ConnectorError):
                    self._single.update(batch)  # one bad page must not fail its neighbours
                    pages = {}
                for pid, page in pages.items():
                    if pid != doc_id and pid in batch:
                        self._ahead.keep(pid, page, epoch)
                if doc_id in pages:
                    return pages[doc_id]
        try:
            return self._fetch_one(doc_id)
        except (RemoteUnavailable, ConnectorError) as exc:
            raise DocumentUnavailable("fetch-failed", doc_id=doc_id, connector=self.name, detail=str(exc)) from None

    def _document(self, doc_id: str, page: dict[str, Any] | None) -> SourceDocument:
        if page is None:
            raise DocumentGone("deleted", doc_id=doc_id, connector=self.name)
        if str(page.get("id", doc_id)) != doc_id:
            raise DocumentGone("not-a-page-id", doc_id=doc_id, connector=self.name,
                               detail=f"Confluence names this page {page.get('id')}")
        if page.get("status", "current") != "current":
            raise DocumentGone(str(page.get("status")), doc_id=doc_id, connector=self.name)
        space = (page.get("space") or {}).get("key")
        if space not in self.cfg.spaces:
            raise DocumentGone("moved-out", doc_id=doc_id, connector=self.name,
                               detail=f"now in space {space}, which is not indexed")
        title = str(page.get("title", ""))
        storage = str(((page.get("body") or {}).get("storage") or {}).get("value", ""))
        content = storage_to_html(title, storage).encode("utf-8")
        version = page.get("version") or {}
        links = page.get("_links") or {}
        base = links.get("base") or self.cfg.base_url
        webui = links.get("webui", "")
        uri = webui if webui.startswith(("http://", "https://")) else base.rstrip("/") + webui
        number = str(version.get("number", ""))
        # Title and body: a renamed page keeps its vectors (chunks are reused) but its rows get the new title.
        content_id = "sha256:" + hashlib.sha256(title.encode() + b"\0" + storage.encode()).hexdigest()
        self._remember_restriction(page)
        acl, acl_note = self._page_acl(str(space), self._chain(page))
        return SourceDocument(
            doc_id=doc_id, fingerprint=self._fingerprint(number, acl), revision=number, acl=acl, acl_note=acl_note,
            uri=uri, title=title, content=content,
            media_type="html", content_id=content_id,
            modified_at=dt.datetime.fromtimestamp(_parse_when(version["when"]), tz=dt.UTC) if version.get("when") else None,
            metadata={"space": str(space), "page_id": doc_id},
        )

    # -- polling ---------------------------------------------------------------------------------------
    @property
    def poll_interval(self) -> float | None:
        return self.cfg.poll_interval or None

    def load_cursor(self) -> dict[str, Any] | None:
        """The committed cursor: ``ts`` (newest modification handled), ``seen`` (id:version handled near
        it) and ``reconciled_at`` (last full id listing)."""
        data = read_json(self.cursor_path)
        if not isinstance(data, dict) or data.get("state_version") != CURSOR_VERSION:
            return None
        if data.get("base_url") != self.cfg.base_url or data.get("spaces") != list(self.cfg.spaces):
            return None  # another site or other spaces: start again with a full listing
        return data

    def _search_since(self, since: float) -> list[dict[str, Any]]:
        minutes = max(1, math.ceil((time.time() - since) / 60.0))
        cql = f'type=page AND {self._space_cql()} AND lastmodified >= now("-{minutes}m") order by lastmodified asc'
        # Versions only: the bodies come in read-ahead batches, where one failing page cannot fail the poll.
        return list(self._pages("/rest/api/content/search", {"cql": cql, "expand": "version",
                                                             "limit": self.cfg.page_size}))

    def poll(self) -> Iterator[Change] | None:
        self._failed.clear()
        self._pending = None
        cursor = self.load_cursor()
        now = time.time()
        if cursor is None or now - float(cursor.get("reconciled_at", 0)) >= self.cfg.reconcile_interval:
            # The id reconciliation: a full listing, compared with the index by the engine. Changes made
            # while it runs are caught by the next search (the cursor starts an overlap before now).
            self._pending = {"kind": "rescan", "ts": now, "seen": {}, "reconciled_at": now, "acls": None}
            return iter([Change(connector=self.name, kind="rescan", doc_id="", seen_at=now)])
        base_ts = float(cursor["ts"])
        seen_before: dict[str, float] = dict(cursor.get("seen", {}))
        try:
            results = self._search_since(base_ts - self.cfg.overlap)
        except (RemoteUnavailable, ConnectorError) as exc:
            raise self._failure(exc, "searching for changes") from None
        regranted: list[str] = []
        acls: dict[str, str] = dict(cursor.get("acls", {}))
        if self._capture:
            try:
                swept = self._sweep()
                fresh = {pid: self._acl_hash(acl) for pid, acl in self._swept_acls(swept).items()}
            except (RemoteUnavailable, ConnectorError) as exc:
                raise self._failure(exc, "reading page restrictions") from None
            regranted = [pid for pid, h in fresh.items() if acls.get(pid) != h]
            acls = fresh
        rows: list[tuple[str, float, str]] = []
        for page in results:
            pid = str(page["id"])
            version = page.get("version") or {}
            key = f"{pid}:{version.get('number')}"
            if key in seen_before:
                continue
            ts = _parse_when(version["when"]) if version.get("when") else now
            rows.append((key, ts, pid))
        rows.sort(key=lambda r: r[1])
        self._pending = {"kind": "incremental", "ts": base_ts, "seen": seen_before, "rows": rows,
                         "reconciled_at": cursor.get("reconciled_at", 0), "acls": acls,
                         "acls_before": dict(cursor.get("acls", {}))}
        # Pages whose readers changed (a restriction, a space permission): read again for their new ACL.
        ids = list(dict.fromkeys([*(pid for _, _, pid in rows), *regranted]))
        self._ahead.forget()
        self._plan(ids)
        return iter([Change(connector=self.name, kind="upsert", doc_id=pid, seen_at=now) for pid in ids])

    def commit_cursor(self) -> None:
        """Persist the last poll's cursor, stopping before the first change of a page that failed."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        failed = set(self._failed)
        high, seen = float(pending["ts"]), dict(pending["seen"])
        if pending["kind"] == "rescan":
            if failed:
                log.warning("confluence.cursor_held", connector=self.name, failed=len(failed))
                return
            # Search from an overlap before the listing started, skipping the versions the listing saw.
            seen.update(self._listed)
            acls = dict(self._acls)
        else:
            # A page that failed to read keeps its old readers' hash, so the next poll tries it again.
            acls, before = dict(pending["acls"]), pending["acls_before"]
            for pid in failed:
                if pid in before:
                    acls[pid] = before[pid]
                else:
                    acls.pop(pid, None)
            blocked = False
            for key, ts, pid in pending["rows"]:
                if pid in failed:
                    blocked = True
                    continue
                seen[key] = ts
                if not blocked:
                    high = max(high, ts)
        seen = {k: v for k, v in seen.items() if v >= high - self.cfg.overlap}
        write_json_atomic(self.cursor_path, {
            "state_version": CURSOR_VERSION, "base_url": self.cfg.base_url, "spaces": list(self.cfg.spaces),
            "ts": high, "seen": seen, "reconciled_at": pending["reconciled_at"], "acls": acls})

    def close(self) -> None:
        self.http.close()
        self._ahead.clear()

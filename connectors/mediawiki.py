"""MediaWiki connector: pages of a wiki through its Action API.

* First sync (and any full reconcile) lists pages with ``generator=allpages`` and ``prop=info`` (500 titles
  and their latest revids per request, redirects left out); ``read`` fetches content 50 titles per request
  (read-ahead in listing or poll order) and serves the rest of the batch from a cache that the next listing
  or poll empties.
* Incremental sync reads ``list=recentchanges`` (edits, new pages and the delete, restore, move, import and
  merge logs) from a persisted cursor. Timestamps have whole-second resolution and rows may become visible
  out of order, so each poll re-reads an overlap window before the cursor and skips rows already handled,
  keyed by revision id (log rows by log id). The cursor stops before the first row whose page could not
  be read, so a failed page is retried on the next poll while nothing around it is handled twice.
* Page text is the revision's raw wikitext, rendered to plain text by syncd's ``wikitext`` extractor
  (mwparserfromhell): it keeps section headings on exact source lines for chunk citations and needs no
  extra request per page, whereas ``action=parse`` works one page per request.
* ``doc_id`` is the page's canonical title (another spelling of it reads as gone), ``revision`` the revid,
  ``uri`` the page's canonical URL, and ``content_id`` the revision's sha1: a move (which adds a null
  revision with a new revid and the same text) is paired by the engine as a rename and embeds nothing.
  Redirects are never indexed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any, Literal

import httpx
from pydantic import SecretStr, field_validator, model_validator

from connectors._http import PoliteClient, ReadAhead, RemoteUnavailable, Retryable, parse_retry_after
from connectors.base import Connector, ConnectorContext, is_valid_doc_id
from syncd import __version__
from syncd.config import Duration, PushConfig, resolve_secret
from syncd.errors import ConnectorError, DocumentGone, DocumentSkipped, DocumentUnavailable, RootUnavailable
from syncd.logs import get_logger
from syncd.models import Change, DocumentRef, SourceDocument
from syncd.state import read_json, write_json_atomic

log = get_logger("syncd.mediawiki")

CURSOR_VERSION = 1
_CACHE_TTL = 120.0
"""Seconds a read-ahead page stays servable: the engine reads a batch right after listing or polling it."""
_DOWN_GRACE = 30.0
"""After the wiki could not be reached at all, reads fail fast for this long instead of each retrying."""

# Log events that change which pages exist or what they hold. Others (protect, patrol, block...) do not.
_MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError)
"""What parsing an answer of valid JSON but unexpected shape raises; translated at the connector's edge."""
_NOT_IN_TITLES = frozenset("|") | frozenset(map(chr, [*range(32), 127]))
"""Characters no title holds: "|" would split a multi-title request, control characters are never legal."""
_UPSERT_LOGS = {("delete", "restore"), ("delete", "revision"), ("import", "upload"), ("import", "interwiki"),
                ("merge", "merge"), ("contentmodel", "change"), ("contentmodel", "new"),
                # Who may read a page: its ACL is read again (nothing is embedded when only that changed).
                ("protect", "protect"), ("protect", "modify"), ("protect", "unprotect")}
_SITE_ACL_TTL = 300.0
"""Seconds the wiki's group rights are kept between two reads (a full listing always reads them again)."""
_LEGACY_LEVELS = {"sysop": "editprotected", "autoconfirmed": "editsemiprotected"}
"""Protection levels named after a group in old wikis, and the right each stands for."""


class MediaWikiConfig(PushConfig):
    type: Literal["mediawiki"]
    api_url: str
    """The Action API endpoint, e.g. https://wiki.example.org/w/api.php."""
    namespaces: tuple[int, ...] = (0,)
    """Namespace ids to index (0 = main)."""
    poll_interval: Duration = 60.0
    """How often recentchanges is read."""
    reconcile_interval: Duration = 0.0
    """How often the full page listing is compared with the index (0 = only at start)."""
    check_interval: Duration = 5.0
    """How often the newest row of recentchanges (one row, the configured namespaces) is read: a row the last
    poll did not see starts the poll at once, so an edit is indexed within seconds (0 = off: only polls)."""
    overlap: Duration = 300.0
    """How far before the cursor each poll re-reads recentchanges; rows already handled are skipped."""
    rc_max_age: Duration = 90 * 86400.0
    """The wiki's $wgRCMaxAge: a cursor older than this falls back to a full listing."""
    username_env: str | None = None
    """Environment variable holding the bot-password user name (User@botname); none for anonymous."""
    password_env: str | None = None
    """Environment variable holding the bot password."""
    request_rate: float = 5.0
    """Requests per second at most (0 = unlimited)."""
    maxlag: int = 5
    """Sent as maxlag: the wiki asks us to wait when its replicas lag more than this (0 = not sent)."""
    timeout: Duration = 30.0
    """Per-request timeout."""
    max_retries: int = 5
    """Retries of a failed request (5xx, 429, timeout, maxlag) before giving up on it."""
    max_backoff: Duration = 60.0
    """Longest single wait between retries (Retry-After included)."""
    batch_size: int = 50
    """Titles per content request (the API allows 50, 500 for bots)."""
    user_agent: str = ""
    """User-Agent sent to the wiki; defaults to syncd/<version>."""

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL of api.php")
        return value

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(ns < 0 for ns in value):
            raise ValueError("must list at least one namespace id >= 0")
        return value

    @field_validator("request_rate")
    @classmethod
    def _rate(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be >= 0")
        return value

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int) -> int:
        if not 1 <= value <= 500:
            raise ValueError("must be between 1 and 500")
        return value

    @field_validator("max_retries", "maxlag")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be >= 0")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> MediaWikiConfig:
        if (self.username_env is None) != (self.password_env is None):
            raise ValueError("username_env and password_env go together")
        return self


def _parse_ts(value: str) -> float:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def _format_ts(value: float) -> str:
    return dt.datetime.fromtimestamp(value, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Page:
    """One page as the content request saw it: a current revision, or why there is none."""

    __slots__ = ("title", "gone", "detail", "data", "epoch")

    def __init__(self, title: str, *, gone: str = "", detail: str = "", data: dict[str, Any] | None = None,
                 epoch: int = 0) -> None:
        self.title = title
        self.gone = gone
        self.detail = detail
        self.data = data or {}
        self.epoch = epoch


class MediaWikiConnector(Connector):
    type_name = "mediawiki"
    config_model = MediaWikiConfig

    def __init__(self, config: MediaWikiConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self._username: str | None = None
        self._password: SecretStr | None = None
        if config.username_env is not None:
            self._username = resolve_secret(config.username_env, key=f"connectors.{config.name}.username_env")
            self._password = SecretStr(resolve_secret(config.password_env,
                                                      key=f"connectors.{config.name}.password_env") or "")
        self.http = PoliteClient(
            name=config.name, headers={"User-Agent": config.user_agent or f"syncd/{__version__}"},
            rate=config.request_rate, timeout=config.timeout, max_retries=config.max_retries,
            max_backoff=config.max_backoff)
        self._logged_in = False
        self._ahead: ReadAhead[_Page] = ReadAhead(_CACHE_TTL)
        self._order: dict[str, int] = {}
        self._order_list: list[str] = []
        self._single: set[str] = set()
        self._down_until = 0.0
        self._failed: set[str] = set()
        self._rights: tuple[dict[str, list[str]], float] | None = None  # group -> rights, and when read
        self._pending: dict[str, Any] | None = None
        self.cursor_path = context.state_dir / "cursor.json"
        self._polled: tuple[int | None, float] | None = None
        """(newest rcid, the wiki's time) of the last read of recentchanges, for ``has_changes``."""

    # -- the API ---------------------------------------------------------------------------------------
    def _check(self, response: httpx.Response) -> None:
        if response.status_code != 200:
            return
        try:
            data = response.json()
        except ValueError:
            # A body cut short or garbled on the way (a proxy, a worker killed mid-answer) is worth another
            # try; a URL that is not api.php fails the same way every time and ends as an error below.
            raise Retryable(f"{self.cfg.api_url} did not answer JSON (cut short, or not the api.php URL?)") from None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and error.get("code") == "maxlag":
            raise Retryable("the wiki's replicas lag (maxlag)",
                            retry_after=parse_retry_after(response.headers.get("Retry-After")) or 5.0)

    def _api(self, params: dict[str, Any], *, post: bool = False, relogin: bool = True,
             auth: bool = True) -> dict[str, Any]:
        """One Action API call (JSON, formatversion 2). Raises RemoteUnavailable or ConnectorError."""
        if auth and self._username and not self._logged_in:
            self._login()
        full: dict[str, Any] = {"format": "json", "formatversion": "2", **params}
        if self.cfg.maxlag:
            full["maxlag"] = str(self.cfg.maxlag)
        if self._logged_in:
            full["assert"] = "user"
        long = post or sum(len(str(v)) for v in full.values()) > 1500
        if long:
            response = self.http.request("POST", self.cfg.api_url, data=full, check=self._check)
        else:
            response = self.http.request("GET", self.cfg.api_url, params=full, check=self._check)
        if response.status_code != 200:
            raise ConnectorError(f"{self.cfg.api_url} answered HTTP {response.status_code}", connector=self.name)
        try:
            data = response.json()
        except ValueError:
            raise ConnectorError(f"{self.cfg.api_url} did not answer JSON; is it the api.php URL?",
                                 connector=self.name) from None
        if not isinstance(data, dict):
            raise ConnectorError(f"{self.cfg.api_url} answered JSON that is not an object", connector=self.name)
        error = data.get("error")
        if isinstance(error, dict):
            if error.get("code") in ("assertuserfailed", "assertbotfailed") and relogin:
                self._logged_in = False
                return self._api(params, post=post, relogin=False)
            raise ConnectorError(f"API error {error.get('code')}: {error.get('info', '')}", connector=self.name)
        self._down_until = 0.0
        return dict(data)

    def _login(self) -> None:
        assert self._username is not None and self._password is not None
        self._logged_in = False
        tokens = self._api({"action": "query", "meta": "tokens", "type": "login"}, relogin=False, auth=False)
        token = tokens["query"]["tokens"]["logintoken"]
        result = self._api({"action": "login", "lgname": self._username,
                            "lgpassword": self._password.get_secret_value(), "lgtoken": token},
                           post=True, relogin=False, auth=False)
        outcome = result.get("login", {}).get("result")
        if outcome != "Success":
            # The reason never contains the password; the user name is not a secret.
            raise ConnectorError(f"login as {self._username} failed: {outcome}", connector=self.name)
        self._logged_in = True
        log.info("mediawiki.logged_in", connector=self.name, user=self._username)

    def _query_all(self, params: dict[str, Any], *, post: bool = False) -> Iterator[dict[str, Any]]:
        """Every ``query`` part of a continued query."""
        cont: dict[str, Any] = {}
        while True:
            data = self._api({**params, **cont}, post=post)
            yield data.get("query", {})
            if "continue" not in data:
                return
            cont = data["continue"]

    def _malformed(self, exc: Exception, what: str) -> ConnectorError:
        return ConnectorError(f"wiki at {self.cfg.api_url} answered an unexpected shape while {what}: "
                              f"{type(exc).__name__}: {exc}", connector=self.name)

    def _unavailable(self, exc: RemoteUnavailable | ConnectorError, what: str) -> ConnectorError:
        if isinstance(exc, RemoteUnavailable) and exc.transport:
            return RootUnavailable(f"wiki at {self.cfg.api_url} unreachable while {what}: {exc}", connector=self.name)
        return ConnectorError(f"wiki at {self.cfg.api_url} failed while {what}: {exc}", connector=self.name)

    def _answers(self) -> bool:
        """Whether the wiki answers a small request: tells a page that cannot be fetched from a wiki that is down."""
        try:
            self._api({"action": "query", "meta": "siteinfo"})
        except (RemoteUnavailable, ConnectorError):
            return False
        return True

    def check_available(self) -> None:
        """Raises RootUnavailable when the wiki does not answer (the engine then deletes nothing)."""
        try:
            self._api({"action": "query", "meta": "siteinfo"})
        except (RemoteUnavailable, ConnectorError) as exc:
            raise RootUnavailable(f"wiki at {self.cfg.api_url} is not answering: {exc}", connector=self.name) from None

    # -- permissions -----------------------------------------------------------------------------------
    def _group_rights(self, *, fresh: bool = False) -> dict[str, list[str]] | None:
        """The wiki's groups and their rights (``meta=siteinfo&siprop=usergroups``: $wgGroupPermissions as the
        API reports it), or None when the wiki does not say."""
        if not fresh and self._rights is not None and time.monotonic() - self._rights[1] < _SITE_ACL_TTL:
            return self._rights[0]
        try:
            answer = self._api({"action": "query", "meta": "siteinfo", "siprop": "usergroups"})
            rights = {str(g["name"]): [str(r) for r in g.get("rights", [])] for g in answer["query"]["usergroups"]}
        except (RemoteUnavailable, ConnectorError, *_MALFORMED):
            return None
        self._rights = (rights, time.monotonic())
        return rights

    def _acl(self, page: dict[str, Any] | None) -> tuple[tuple[str, ...] | None, str]:
        """Who may read a page: the groups with the ``read`` right (``*``, anyone, is ``everyone``; ``user``,
        any logged-in user, is ``group:user``), narrowed by a read protection of the page where the wiki has
        one (an extension's; core protects editing and moving only). (None, why) when the wiki does not say."""
        rights = self._group_rights()
        if rights is None:
            return None, "the wiki did not report its group rights (meta=siteinfo&siprop=usergroups)"
        readers = [g for g, r in rights.items() if "read" in r]
        for protection in (page or {}).get("protection", []):
            if protection.get("type") != "read":
                continue
            level = str(protection.get("level", ""))
            right = _LEGACY_LEVELS.get(level, level)
            readers = [g for g in readers if right in rights.get(g, [])]
        return tuple(sorted("everyone" if g == "*" else f"group:{g}" for g in readers)), ""

    @staticmethod
    def _fingerprint(revid: object, acl: tuple[str, ...] | None) -> str:
        # Who may read a page is part of its fingerprint: a change of the wiki's rights or of a page's
        # protection makes a listing read the page again (its ACL is then rewritten, nothing embedded).
        text = "\n".join(acl) if acl is not None else "?"
        return f"{revid}:{hashlib.blake2b(text.encode(), digest_size=4).hexdigest()}"

    # -- listing ---------------------------------------------------------------------------------------
    def list_documents(self) -> Iterator[DocumentRef]:
        refs: list[DocumentRef] = []
        self._group_rights(fresh=True)
        try:
            for ns in self.cfg.namespaces:
                for query in self._query_all({"action": "query", "generator": "allpages", "gapnamespace": ns,
                                              "gapfilterredir": "nonredirects", "gaplimit": "max",
                                              "prop": "info", "inprop": "protection"}):
                    for page in query.get("pages", []):
                        if page.get("missing") or page.get("redirect"):
                            continue
                        acl, _ = self._acl(page)
                        refs.append(DocumentRef(doc_id=page["title"], fingerprint=self._fingerprint(page["lastrevid"], acl)))
        except (RemoteUnavailable, ConnectorError) as exc:
            raise self._unavailable(exc, "listing pages") from None
        except _MALFORMED as exc:
            raise self._malformed(exc, "listing pages") from None
        self._ahead.forget()
        self._plan([r.doc_id for r in refs])
        return iter(refs)

    def _plan(self, titles: list[str]) -> None:
        """The order in which the engine will read: read-ahead fetches the titles that follow."""
        self._order_list = list(dict.fromkeys(titles))
        self._order = {t: i for i, t in enumerate(self._order_list)}
        self._single.clear()

    # -- reading ---------------------------------------------------------------------------------------
    def _fetch(self, titles: list[str]) -> dict[str, _Page]:
        """Current revisions of ``titles`` (one request, continued when the answer is large), keyed by the
        title asked for. A title the API answers under another one (normalised case, spaces, Unicode, a
        fragment dropped) is another spelling of that page: it reads as gone, so no page is indexed twice."""
        epoch = self._ahead.epoch
        renamed: dict[str, str] = {}
        found: dict[str, _Page] = {}
        params = {"action": "query", "titles": "|".join(titles), "prop": "revisions|info", "inprop": "url|protection",
                  "rvprop": "ids|sha1|timestamp|content|contentmodel", "rvslots": "main"}
        for query in self._query_all(params, post=len(titles) > 1):
            for step in query.get("normalized", []) + query.get("converted", []):
                asked = urllib.parse.unquote(step["from"]) if step.get("fromencoded") else step["from"]
                renamed.setdefault(asked, step["to"])
            for page in query.get("pages", []):
                title = page.get("title", "")
                if page.get("invalid"):
                    found[title] = _Page(title, gone="invalid title", epoch=epoch)
                elif page.get("missing"):
                    found[title] = _Page(title, gone="deleted", epoch=epoch)
                elif page.get("redirect"):
                    found[title] = _Page(title, gone="redirect", epoch=epoch)
                elif page.get("revisions"):
                    found[title] = _Page(title, data=page, epoch=epoch)
        out: dict[str, _Page] = {}
        for asked in titles:
            title = renamed.get(asked, asked)
            if title != asked:
                # The listing and the polls name every page by its canonical title: this is another spelling.
                out[asked] = _Page(asked, gone="not-canonical", detail=f"the wiki names this page {title!r}",
                                   epoch=epoch)
            elif title in found:
                out[asked] = found[title]
        return out

    def _readahead(self, doc_id: str) -> list[str]:
        if doc_id in self._single or doc_id not in self._order:
            return [doc_id]
        start = self._order[doc_id]
        batch = [doc_id]
        for title in self._order_list[start + 1:]:
            if len(batch) >= self.cfg.batch_size:
                break
            if title not in self._ahead and title not in self._single:
                batch.append(title)
        return batch

    def read(self, doc_id: str) -> SourceDocument:
        if not is_valid_doc_id(doc_id) or not _NOT_IN_TITLES.isdisjoint(doc_id):
            # Not a title the wiki could hold (and "|" would ask for two pages): it names nothing here.
            raise DocumentGone("invalid title", doc_id=doc_id, connector=self.name)
        try:
            page = self._read_page(doc_id)
            document = self._document(doc_id, page)
        except DocumentUnavailable:
            self._failed.add(doc_id)
            raise
        except _MALFORMED as exc:
            self._failed.add(doc_id)
            raise DocumentUnavailable("bad-answer", doc_id=doc_id, connector=self.name,
                                      detail=f"the API answered an unexpected shape: {type(exc).__name__}: {exc}",
                                      ) from None
        self._failed.discard(doc_id)
        return document

    def _read_page(self, doc_id: str) -> _Page:
        kept = self._ahead.take(doc_id)
        if kept is not None:
            return kept
        if time.monotonic() < self._down_until:
            raise DocumentUnavailable("wiki-unavailable", doc_id=doc_id, connector=self.name,
                                      detail="the wiki did not answer; retried on the next cycle")
        batch = self._readahead(doc_id)
        try:
            pages = self._fetch(batch)
        except (RemoteUnavailable, ConnectorError) as exc:
            if len(batch) > 1:
                # One bad page must not fail its neighbours (a page whose answer times out or is cut short
                # fails like a 5xx): fetch this batch's pages one by one.
                self._single.update(batch)
                return self._read_page(doc_id)
            if isinstance(exc, RemoteUnavailable) and exc.transport and not self._answers():
                self._down_until = time.monotonic() + _DOWN_GRACE
                raise DocumentUnavailable("wiki-unavailable", doc_id=doc_id, connector=self.name,
                                          detail=str(exc)) from None
            raise DocumentUnavailable("fetch-failed", doc_id=doc_id, connector=self.name, detail=str(exc)) from None
        for title, fetched in pages.items():
            if title != doc_id:
                self._ahead.keep(title, fetched, fetched.epoch)
        page = pages.get(doc_id)
        if page is None:
            raise DocumentUnavailable("fetch-failed", doc_id=doc_id, connector=self.name,
                                      detail="the API returned no revision for this page")
        return page

    def _document(self, doc_id: str, page: _Page) -> SourceDocument:
        if page.gone:
            raise DocumentGone(page.gone, doc_id=doc_id, connector=self.name, detail=page.detail)
        data = page.data
        if data.get("ns") not in self.cfg.namespaces:
            raise DocumentGone("excluded", doc_id=doc_id, connector=self.name,
                               detail=f"namespace {data.get('ns')} is not indexed")
        rev = data["revisions"][0]
        slot = rev.get("slots", {}).get("main", {})
        if slot.get("texthidden") or "content" not in slot:
            raise DocumentSkipped("hidden", doc_id=doc_id, connector=self.name, detail="revision text is hidden")
        model = slot.get("contentmodel", "wikitext")
        if model not in ("wikitext", "text"):
            raise DocumentSkipped("unsupported-type", doc_id=doc_id, connector=self.name,
                                  detail=f"content model {model}")
        content = str(slot["content"]).encode("utf-8")
        sha1 = rev.get("sha1") if not rev.get("sha1hidden") else None
        content_id = f"sha1:{sha1}" if sha1 else "blake2b:" + hashlib.blake2b(content, digest_size=16).hexdigest()
        revid = str(rev["revid"])
        acl, acl_note = self._acl(data)
        return SourceDocument(
            doc_id=doc_id, fingerprint=self._fingerprint(revid, acl), revision=revid, acl=acl, acl_note=acl_note,
            uri=data.get("canonicalurl") or data.get("fullurl") or "",
            title=data.get("title", doc_id), content=content,
            media_type="wikitext" if model == "wikitext" else "text",
            modified_at=dt.datetime.fromtimestamp(_parse_ts(rev["timestamp"]), tz=dt.UTC) if rev.get("timestamp") else None,
            metadata={"pageid": str(data.get("pageid", "")), "namespace": str(data.get("ns", ""))},
            content_id=content_id,
        )

    # -- polling ---------------------------------------------------------------------------------------
    @property
    def poll_interval(self) -> float | None:
        return self.cfg.poll_interval or None

    @property
    def reconcile_interval(self) -> float | None:
        return self.cfg.reconcile_interval or None

    @property
    def check_interval(self) -> float | None:
        return self.cfg.check_interval or None

    def has_changes(self) -> bool:
        """One request for the newest recentchanges row of the indexed namespaces: True when the last poll
        had not seen it (by rcid, or by time when that poll saw no rows at all)."""
        data = self._api({"action": "query", "list": "recentchanges", "rcdir": "older", "rclimit": "1",
                          "rctype": "edit|new|log", "rcprop": "ids|timestamp",
                          "rcnamespace": "|".join(str(ns) for ns in self.cfg.namespaces)})
        rows = data.get("query", {}).get("recentchanges", [])
        if not rows:
            return False
        top, seen = rows[0], self._polled
        if seen is None:
            return True  # no poll in this process yet: let one run
        rcid, polled_top, polled_at = int(top.get("rcid", 0)), seen[0], seen[1]
        if polled_top is not None:
            return rcid > polled_top
        # Whole-second timestamps: a row of the poll's own second may be news.
        return _parse_ts(str(top.get("timestamp"))) >= polled_at - 1

    def load_cursor(self) -> dict[str, Any] | None:
        """The committed cursor: ``ts`` (high-water timestamp) and ``seen`` (row keys handled near it)."""
        data = read_json(self.cursor_path)
        if not isinstance(data, dict) or data.get("state_version") != CURSOR_VERSION:
            return None
        if data.get("api_url") != self.cfg.api_url:
            return None  # another wiki: its cursor means nothing here
        if not isinstance(data.get("ts"), int | float) or not isinstance(data.get("seen", {}), dict):
            return None  # damaged by hand: list everything again rather than fail every poll
        return data

    def _changes(self, since: float) -> tuple[list[dict[str, Any]], float]:
        """recentchanges rows from ``since`` on, oldest first, and the wiki's clock now."""
        rows: list[dict[str, Any]] = []
        now: float | None = None
        cont: dict[str, Any] = {}
        while True:
            data = self._api({"action": "query", "list": "recentchanges", "rcdir": "newer",
                              "rcstart": _format_ts(since), "rclimit": "max", "rctype": "edit|new|log",
                              "rcprop": "title|ids|timestamp|loginfo", "curtimestamp": "1", **cont})
            if now is None and data.get("curtimestamp"):
                now = _parse_ts(data["curtimestamp"])
            rows.extend(data.get("query", {}).get("recentchanges", []))
            if "continue" not in data:
                break
            cont = data["continue"]
        wiki_now = now if now is not None else time.time()
        ids = [int(r["rcid"]) for r in rows if isinstance(r.get("rcid"), int)]
        self._polled = (max(ids) if ids else None, wiki_now)
        return rows, wiki_now

    def _row_titles(self, row: dict[str, Any]) -> list[tuple[str, str]]:
        """(kind, title) for each page of interest a recentchanges row touches."""
        wanted = set(self.cfg.namespaces)
        title, ns = row.get("title", ""), row.get("ns")
        if row.get("type") in ("edit", "new"):
            return [("upsert", title)] if ns in wanted else []
        key = (row.get("logtype"), row.get("logaction"))
        params = row.get("logparams") or {}
        out: list[tuple[str, str]] = []
        if key == ("delete", "delete"):
            if ns in wanted:
                out.append(("delete", title))
        elif row.get("logtype") == "move":
            if ns in wanted:
                out.append(("delete", title))
            target = params.get("target_title")
            if target and params.get("target_ns") in wanted:
                out.append(("upsert", target))
        elif key in _UPSERT_LOGS:
            if ns in wanted:
                out.append(("upsert", title))
            dest = params.get("dest_title")
            if key == ("merge", "merge") and dest and params.get("dest_ns") in wanted:
                out.append(("upsert", dest))
        return out

    @staticmethod
    def _row_key(row: dict[str, Any]) -> str:
        if row.get("type") == "log":
            return f"l{row.get('logid', 0)}:{row.get('rcid', 0)}"
        return f"r{row.get('revid', 0)}"

    def poll(self) -> Iterator[Change] | None:
        self._failed.clear()
        self._pending = None
        cursor = self.load_cursor()
        try:
            if cursor is None or time.time() - float(cursor["ts"]) > self.cfg.rc_max_age:
                # No usable cursor: remember where recentchanges stands now, then list everything.
                rows, now = self._changes(time.time() - self.cfg.overlap)
                seen = {self._row_key(r): _parse_ts(r["timestamp"]) for r in rows}
                high = max([now - self.cfg.overlap, *seen.values()])
                self._pending = {"kind": "rescan", "ts": high, "seen": seen}
                self._ahead.forget()
                return iter([Change(connector=self.name, kind="rescan", doc_id="", seen_at=time.time())])
            base_ts = float(cursor["ts"])
            seen_before: dict[str, float] = dict(cursor.get("seen", {}))
            rows, _ = self._changes(base_ts - self.cfg.overlap)
        except (RemoteUnavailable, ConnectorError) as exc:
            raise self._unavailable(exc, "reading recentchanges") from None
        except _MALFORMED as exc:
            raise self._malformed(exc, "reading recentchanges") from None
        try:
            return self._plan_changes(rows, base_ts, seen_before)
        except _MALFORMED as exc:
            self._pending = None
            raise self._malformed(exc, "reading recentchanges") from None

    def _plan_changes(self, rows: list[dict[str, Any]], base_ts: float,
                      seen_before: dict[str, float]) -> Iterator[Change]:
        fresh: list[tuple[str, float, list[tuple[str, str]]]] = []
        latest: dict[str, tuple[str, float]] = {}
        for row in rows:
            key = self._row_key(row)
            if key in seen_before:
                continue
            ts = _parse_ts(row["timestamp"])
            touched = self._row_titles(row)
            fresh.append((key, ts, touched))
            for kind, title in touched:
                first = latest.get(title, (kind, ts))[1]
                latest[title] = (kind, first)
        self._pending = {"kind": "incremental", "ts": base_ts, "seen": seen_before, "rows": fresh}
        self._ahead.forget()
        self._plan(list(latest))
        if fresh:
            log.info("mediawiki.polled", connector=self.name, rows=len(fresh), pages=len(latest))
        return iter([Change(connector=self.name, kind=kind, doc_id=title, seen_at=first)
                     for title, (kind, first) in latest.items()])

    def commit_cursor(self) -> None:
        """Persist the cursor of the last poll, stopping before the first row of a page that failed."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        failed = set(self._failed)
        if pending["kind"] == "rescan":
            if failed:
                log.warning("mediawiki.cursor_held", connector=self.name, failed=len(failed),
                            reason="pages failed during the full listing; listing again on the next poll")
                return
            high, seen = float(pending["ts"]), dict(pending["seen"])
        else:
            high, seen = float(pending["ts"]), dict(pending["seen"])
            blocked = False
            for key, ts, touched in pending["rows"]:
                if any(title in failed for _, title in touched):
                    blocked = True
                    continue
                seen[key] = ts
                if not blocked:
                    high = max(high, ts)
            if blocked:
                log.warning("mediawiki.cursor_held", connector=self.name, failed=sorted(failed),
                            cursor=_format_ts(high))
        floor = high - self.cfg.overlap
        seen = {k: v for k, v in seen.items() if v >= floor}
        write_json_atomic(self.cursor_path, {"state_version": CURSOR_VERSION, "api_url": self.cfg.api_url,
                                             "ts": high, "ts_iso": _format_ts(high), "seen": seen})

    def close(self) -> None:
        self.http.close()
        self._ahead.clear()

"""Source drivers for the connector contract suite: one small object per connector type that changes its
source the way a user would (a file written, a commit pushed, a wiki page edited through the Action API, a
Confluence page edited on the server) and says what a read of each document must return.

Every driver offers the same surface, so ``test_contract.py`` runs one suite against every connector type:

* ``add(name, text)`` creates a document and returns its doc id; ``edit``, ``delete``, ``rename`` change it;
  ``publish()`` makes the changes visible to the connector (a commit and a push for git; nothing elsewhere).
* ``connector()`` builds the real connector through ``syncd.runtime.build_connector`` from a config written
  with ``write_config``; ``config_path`` is that config, for a ``Runtime``.
* ``expected(doc_id)`` is what a read must return, asked from the source itself.
* ``bad_inputs()`` creates documents this kind of source can hold but syncd may not be able to index;
  ``outsiders()`` things beside the source that are not its documents; ``aliases(doc_id)`` other spellings
  of a document's id; ``nameless(doc_id)`` ids that name nothing (not valid, too long, malformed).

What a type documents differently, the driver declares (``watched``, ``reports_deletes``, ``stable_ids``,
``lists_prefixes``) and the suite asserts that documented alternative instead.

Imported by name (``from connector_sources import ...``): pytest puts this folder on ``sys.path`` for its test
module, as it puts ``tests/`` there for ``conftest``, ``gitrepo`` and ``mediawiki_server``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import unicodedata
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from conftest import wait_for, write_config
from gitrepo import GitRepo, git
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from connectors.base import Connector, Watch
from syncd import config as config_mod
from syncd.models import Change
from syncd.runtime import build_connector
from syncd.state import StateDir, write_json_atomic

NAME = "src"
LIMIT = 4096
"""Every media type's size limit in the suite's configs, so an oversized document stays small."""
LIMITS = {"markdown": LIMIT, "text": LIMIT, "rst": LIMIT, "html": LIMIT, "pdf": LIMIT, "wikitext": LIMIT}
OVERSIZED = ("An oversized paragraph about the long migration of grey whales. " * 100).strip()


@dataclass(frozen=True, kw_only=True)
class Expected:
    """What ``read(doc_id)`` must return, as the source itself tells it."""

    revision: str
    uri: str
    title: str
    media_type: str
    content: bytes
    identity: str | None = None
    """The content identity when the source names one of its own (git blob sha, wiki revision sha1)."""


class Source:
    """The driver interface shared by every connector type."""

    kind: str
    watched = False
    """Changes arrive as watcher hints (``watch(sink)``) rather than from ``poll()``."""
    reports_deletes = True
    """Deletions are reported by the watcher or poll; otherwise a due reconcile's full listing finds them."""
    stable_ids = False
    """A rename keeps the doc id (Confluence page ids) instead of replacing it with a new one."""
    lists_prefixes = False
    """``list_documents(prefix)`` lists one folder (the engine's rescan of a folder a watcher reported)."""
    config_path: Path

    def __init__(self) -> None:
        self._made: list[Connector] = []

    def connector(self) -> Connector:
        """The real connector, built from the config the way the runtime builds it."""
        config = config_mod.load(self.config_path)
        made = build_connector(config, config.connectors[0], StateDir(config.state_dir))
        self._made.append(made)
        return made

    def close(self) -> None:
        for made in self._made:
            made.close()

    def add(self, name: str, text: str) -> str:
        raise NotImplementedError

    def edit(self, doc_id: str, text: str) -> None:
        raise NotImplementedError

    def delete(self, doc_id: str) -> None:
        raise NotImplementedError

    def rename(self, doc_id: str, new_name: str) -> str:
        raise NotImplementedError

    def publish(self) -> None:
        """Make the changes so far visible to the connector."""

    def expected(self, doc_id: str) -> Expected:
        raise NotImplementedError

    def missing_id(self) -> str:
        """An id of this source's id space that names no document."""
        raise NotImplementedError

    def title_of(self, name: str) -> str:
        """The title a document added as ``name`` carries."""
        return name

    def bad_inputs(self) -> dict[str, str]:
        """Create the documents of this source that are hard to index; label -> doc id."""
        raise NotImplementedError

    def outsiders(self) -> dict[str, str]:
        """Create things beside the source that are not its documents; label -> the id that names them."""
        raise NotImplementedError

    def aliases(self, doc_id: str) -> dict[str, str]:
        """Other spellings of an existing document's id, which the listing never yields; label -> id."""
        raise NotImplementedError

    def nameless(self, doc_id: str) -> dict[str, str]:
        """Ids that name nothing at the source, whatever it holds (``doc_id`` is an existing document's):
        ids the engine would refuse, and the malformed ids of this source's kind; label -> id."""
        return {"empty": "", "NUL": "\x00", "NUL after an existing id": f"{doc_id}\x00",
                "lone surrogate": f"\udce9{doc_id}"}

    def make_reconcile_due(self, connector: Connector) -> None:
        """For a source that reports no deletions: make the connector's next poll its full reconcile."""


# -- filesystem --------------------------------------------------------------------------------------------
class FilesystemSource(Source):
    kind = "filesystem"
    watched = True
    lists_prefixes = True

    def __init__(self, tmp_path: Path) -> None:
        super().__init__()
        self.root = tmp_path / "docs"
        self.root.mkdir()
        self.config_path = write_config(tmp_path, [{"name": NAME, "type": "filesystem", "path": str(self.root)}],
                                        limits=LIMITS)

    def add(self, name: str, text: str) -> str:
        doc_id = f"{name}.md"
        (self.root / doc_id).write_bytes(f"{text}\n".encode())
        return doc_id

    def edit(self, doc_id: str, text: str) -> None:
        (self.root / doc_id).write_bytes(f"{text}\n".encode())

    def delete(self, doc_id: str) -> None:
        (self.root / doc_id).unlink()

    def rename(self, doc_id: str, new_name: str) -> str:
        new = f"{new_name}.md"
        os.rename(self.root / doc_id, self.root / new)
        return new

    def expected(self, doc_id: str) -> Expected:
        content = (self.root / doc_id).read_bytes()
        # The revision of a file is a hash of its content (the file itself has no revision of its own).
        return Expected(revision=hashlib.blake2b(content, digest_size=16).hexdigest(),
                        uri=os.path.join(str(self.root), doc_id), title=Path(doc_id).stem,
                        media_type="markdown", content=content)

    def missing_id(self) -> str:
        return "nothing-here.md"

    def bad_inputs(self) -> dict[str, str]:
        files: dict[str, tuple[bytes, bytes]] = {
            "binary": (b"binary.md", b"\x00\x01\x02\xff\xfe PNG-ish \x00" * 40),
            "empty": (b"empty.md", b""),
            "whitespace only": (b"blank.md", b"\n \n\t\n"),
            "oversized": (b"oversized.md", OVERSIZED.encode()),
            "invalid UTF-8 content": (b"latin1.md", "caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1")),
            "odd name": ("it's \"odd\"; DROP TABLE — ünïcode.md".encode(), b"A file with an odd name.\n"),
            "non-UTF-8 name": (b"caf\xe9 menu.md", b"A file whose name is Latin-1.\n"),
        }
        out = {}
        for label, (name, content) in files.items():
            with open(os.path.join(os.fsencode(self.root), name), "wb") as fh:
                fh.write(content)
            out[label] = _fs_doc_id(name)
        return out

    def outsiders(self) -> dict[str, str]:
        outside = self.root.parent / "outside.md"
        outside.write_text("A file beside the root folder, not under it.\n")
        (self.root / ".hidden.md").write_text("A hidden file, ignored.\n")
        (self.root / "notes.bin").write_text("No indexable extension.\n")
        (self.root / "sub").mkdir()
        (self.root / "sub" / "inside.md").write_text("A file in a folder, so a parent segment can lead out.\n")
        elsewhere = self.root.parent / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "secret.md").write_text("A file in a folder beside the root, reached by a symlinked folder.\n")
        (self.root / "linked").symlink_to(elsewhere)
        return {"absolute path outside the root": str(outside), "relative path out of the root": "../outside.md",
                "parent segments out of an existing folder": "sub/../../outside.md",
                "absolute path with parent segments": f"{self.root}/../outside.md",
                "through a symlinked folder out of the root": "linked/secret.md",
                "hidden file": ".hidden.md", "file type not included": "notes.bin"}

    def aliases(self, doc_id: str) -> dict[str, str]:
        (self.root / "sub").mkdir(exist_ok=True)
        (self.root / "mirror").symlink_to(self.root)
        return {"dot segment": f"./{doc_id}", "parent segment": f"sub/../{doc_id}", "trailing slash": f"{doc_id}/",
                "doubled slash": f"sub//../{doc_id}", "leading slash": f"/{doc_id}",
                "absolute path": str(self.root / doc_id), "through a symlinked folder": f"mirror/{doc_id}"}

    def nameless(self, doc_id: str) -> dict[str, str]:
        return {**super().nameless(doc_id), "name too long": "n" * 300 + ".md",
                "path too long": "/".join(["d" * 200] * 25) + "/x.md", "a file as a folder": f"{doc_id}/x.md",
                "the root itself": "."}


def _fs_doc_id(name: bytes) -> str:
    """The doc id syncd documents for a file name given as bytes: non-UTF-8 bytes written ``%XX``."""
    out = []
    rest = name
    while rest:
        try:
            out.append(rest.decode("utf-8"))
            break
        except UnicodeDecodeError as exc:
            out.append(rest[:exc.start].decode("utf-8"))
            out.append("".join(f"%{b:02X}" for b in rest[exc.start:exc.end]))
            rest = rest[exc.end:]
    return "".join(out)


# -- git ---------------------------------------------------------------------------------------------------
class GitSource(Source):
    kind = "git"
    lists_prefixes = True

    def __init__(self, tmp_path: Path) -> None:
        super().__init__()
        self.repo = GitRepo(tmp_path / "repo")
        # The branch exists from the start, holding a file that is not a document.
        self.repo.write("LICENSE", "Not a document: no indexable extension.\n")
        self.repo.commit("seed")
        self.repo.push()
        self.config_path = write_config(tmp_path, [{"name": NAME, "type": "git", "url": self.repo.url,
                                                    "branch": self.repo.branch, "poll_interval": "1s"}],
                                        limits=LIMITS)

    def add(self, name: str, text: str) -> str:
        doc_id = f"{name}.md"
        self.repo.write(doc_id, f"{text}\n")
        return doc_id

    def edit(self, doc_id: str, text: str) -> None:
        self.repo.write(doc_id, f"{text}\n")

    def delete(self, doc_id: str) -> None:
        self.repo.remove(doc_id)

    def rename(self, doc_id: str, new_name: str) -> str:
        new = f"{new_name}.md"
        self.repo.move(doc_id, new)
        return new

    def publish(self) -> None:
        self.repo.commit("change")
        self.repo.push()

    def expected(self, doc_id: str) -> Expected:
        head = self.repo.remote_head()
        blob = git(self.repo.remote, "rev-parse", f"{head}:{doc_id}").strip()
        return Expected(revision=head, uri=f"{self.repo.url}/{urllib.parse.quote(doc_id, safe='/')}",
                        title=Path(doc_id).stem, media_type="markdown", content=self.repo.blob(blob), identity=blob)

    def missing_id(self) -> str:
        return "nothing-here.md"

    def bad_inputs(self) -> dict[str, str]:
        files: dict[str, bytes] = {
            "binary": b"\x00\x01\x02\xff\xfe PNG-ish \x00" * 40,
            "empty": b"",
            "whitespace only": b"\n \n\t\n",
            "oversized": OVERSIZED.encode(),
            "invalid UTF-8 content": "caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1"),
            "LFS pointer": (b"version https://git-lfs.github.com/spec/v1\noid sha256:"
                            b"4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n"),
            "odd name": b"A file with an odd name.\n",
        }
        names = {"binary": "binary.md", "empty": "empty.md", "whitespace only": "blank.md",
                 "oversized": "oversized.md", "invalid UTF-8 content": "latin1.md", "LFS pointer": "lfs.md",
                 "odd name": "it's \"odd\"; DROP TABLE — ünïcode.md"}
        for label, content in files.items():
            self.repo.write(names[label], content)
        # A path git holds in Latin-1, added through the index (a checkout on another system made it).
        sha = git(self.repo.work, "hash-object", "-w", "--stdin", input=b"A file whose name is Latin-1.\n").strip()
        git(self.repo.work, "update-index", "--add", "--index-info",
            input=b"100644 " + sha.encode() + b"\tcaf\xe9 menu.md\n")
        return {**names, "non-UTF-8 name": "caf%E9 menu.md"}

    def outsiders(self) -> dict[str, str]:
        (self.repo.root / "outside.md").write_text("A file beside the repository, not in it.\n")
        return {"absolute path": str(self.repo.root / "outside.md"), "relative path out of the tree": "../outside.md",
                "file type not included": "LICENSE"}

    def aliases(self, doc_id: str) -> dict[str, str]:
        return {"dot segment": f"./{doc_id}", "parent segment": f"sub/../{doc_id}", "trailing slash": f"{doc_id}/",
                "leading slash": f"/{doc_id}"}


# -- MediaWiki ---------------------------------------------------------------------------------------------
class MediaWikiSource(Source):
    """Pages in a namespace of the test's own on the real MediaWiki (tests/mediawiki_server.py)."""

    kind = "mediawiki"

    def __init__(self, tmp_path: Path, wiki: Any, ns: tuple[int, str], client: Any) -> None:
        super().__init__()
        self.ns, self.prefix = ns
        self.client = client
        self.config_path = write_config(tmp_path, [{"name": NAME, "type": "mediawiki", "api_url": wiki.api_url,
                                                    "namespaces": [self.ns], "poll_interval": "1s",
                                                    "request_rate": 0}], limits=LIMITS)

    def _edit(self, title: str, text: str, **extra: Any) -> str:
        result = self.client.post(action="edit", title=title, text=text, token=self.client.csrf, summary="test",
                                  **extra)["edit"]
        assert result["result"] == "Success", result
        return str(result["title"])

    def title_of(self, name: str) -> str:
        # MediaWiki capitalises the first letter of a title.
        return f"{self.prefix}:{name[:1].upper()}{name[1:]}"

    def add(self, name: str, text: str) -> str:
        return self._edit(f"{self.prefix}:{name}", text, createonly="1")

    def edit(self, doc_id: str, text: str) -> None:
        self._edit(doc_id, text, nocreate="1")

    def delete(self, doc_id: str) -> None:
        self.client.delete(doc_id)

    def rename(self, doc_id: str, new_name: str) -> str:
        # A move as users make it, leaving a redirect behind (redirects are not documents).
        result = self.client.post(action="move", token=self.client.csrf, reason="test",
                                  **{"from": doc_id, "to": f"{self.prefix}:{new_name}"})["move"]
        return str(result["to"])

    def expected(self, doc_id: str) -> Expected:
        page = self.client.get(action="query", titles=doc_id, prop="revisions|info", inprop="url",
                               rvprop="ids|sha1|content", rvslots="main")["query"]["pages"][0]
        rev = page["revisions"][0]
        return Expected(revision=str(rev["revid"]), uri=page["canonicalurl"], title=page["title"],
                        media_type="wikitext", content=rev["slots"]["main"]["content"].encode(),
                        identity=f"sha1:{rev['sha1']}")

    def missing_id(self) -> str:
        return f"{self.prefix}:Nothing here"

    def bad_inputs(self) -> dict[str, str]:
        out = {
            "oversized": self._edit(f"{self.prefix}:Oversized", OVERSIZED),
            "odd name": self._edit(f"{self.prefix}:It's \"odd\"; DROP TABLE — ünïcode", "A page with an odd title."),
            "markup only": self._edit(f"{self.prefix}:Markup only", "{{Nonexistent template}}\n[[Category:Empty]]"),
            "JSON content model": self._edit(f"{self.prefix}:Data", json.dumps({"not": "wikitext"}),
                                             contentmodel="json"),
        }
        return out

    def outsiders(self) -> dict[str, str]:
        talk = self._edit(f"{self.prefix}_talk:Discussion", "A talk page: a namespace that is not indexed.")
        return {"page of a namespace not indexed": talk, "main namespace page": "Main Page"}

    def aliases(self, doc_id: str) -> dict[str, str]:
        ns, _, name = doc_id.partition(":")
        # A page whose title holds composed letters, for their decomposed (NFD) spelling.
        accented = self._edit(f"{self.prefix}:Crème brûlée", "A page with accents in its title.")
        return {"lower-case first letter": f"{ns}:{name[:1].lower()}{name[1:]}",
                "lower-case namespace name": f"{ns.lower()}:{name}", "with a fragment": f"{doc_id}#Intro",
                "underscore for a trailing space": f"{doc_id}_", "space after the namespace": f"{ns}: {name}",
                "decomposed Unicode (of another page)": unicodedata.normalize("NFD", accented)}

    def nameless(self, doc_id: str) -> dict[str, str]:
        return {**super().nameless(doc_id), "two titles": f"{doc_id}|{doc_id}", "fragment only": "#Intro",
                "control character": f"{doc_id}\x1f", "title too long": f"{self.prefix}:" + "x" * 300,
                "characters no title holds": f"{self.prefix}:[x]"}


# -- Confluence ---------------------------------------------------------------------------------------------
CONTEXT = "/wiki"
SPACE = "DOC"
TOKEN_ENV = "TEST_CONTRACT_CONFLUENCE_TOKEN"
TOKEN = "contract-token"


class FakeConfluence:
    """The minimum of tests/connectors/test_confluence.py's server: pages with versions in spaces, answered in the shapes
    of Confluence's REST API v1 (``results``, ``_links.next``, ``version.number``/``when``, ``body.storage``)."""

    def __init__(self, server: HTTPServer) -> None:
        self.base = server.url_for(CONTEXT).rstrip("/")
        self.pages: dict[str, dict[str, Any]] = {}
        self.next_id = 65537

    def add(self, title: str, body: str, space: str = SPACE) -> str:
        pid = str(self.next_id)
        self.next_id += 1
        self.pages[pid] = {"id": pid, "space": space, "title": title, "body": body, "version": 1,
                           "status": "current", "when": self._now()}
        return pid

    def edit(self, pid: str, *, title: str | None = None, body: str | None = None) -> None:
        page = self.pages[pid]
        page.update({k: v for k, v in (("title", title), ("body", body)) if v is not None})
        page["version"] += 1
        page["when"] = self._now()

    @staticmethod
    def _now() -> str:
        return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def page_json(self, page: dict[str, Any], expand: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": page["id"], "type": "page", "status": page["status"], "title": page["title"],
            "_links": {"webui": f"/spaces/{page['space']}/pages/{page['id']}/{urllib.parse.quote(page['title'])}",
                       "self": f"{self.base}/rest/api/content/{page['id']}"},
        }
        if "version" in expand:
            out["version"] = {"when": page["when"], "number": page["version"], "minorEdit": False}
        if "space" in expand:
            out["space"] = {"key": page["space"], "name": page["space"], "type": "global"}
        if "body.storage" in expand:
            out["body"] = {"storage": {"value": page["body"], "representation": "storage"}}
        return out

    def _listing(self, path: str, items: list[dict[str, Any]], args: dict[str, str], expand: str) -> Response:
        limit = int(args.get("limit", 25))
        start = int(args.get("start", 0))
        links: dict[str, Any] = {"base": self.base, "context": CONTEXT}
        if start + limit < len(items):
            links["next"] = f"{path}?{urllib.parse.urlencode({**args, 'start': str(start + limit)})}"
        body = {"results": [self.page_json(p, expand) for p in items[start:start + limit]], "start": start,
                "limit": limit, "_links": links}
        return Response(json.dumps(body), content_type="application/json")

    def _search(self, cql: str) -> list[dict[str, Any]]:
        pages = [p for p in self.pages.values() if p["status"] == "current"]
        if m := re.search(r"space in \(([^)]*)\)", cql):
            spaces = {s.strip().strip('"') for s in m.group(1).split(",")}
            pages = [p for p in pages if p["space"] in spaces]
        if m := re.search(r"\bid in \(([^)]*)\)", cql):
            ids = {s.strip() for s in m.group(1).split(",")}
            pages = [p for p in pages if p["id"] in ids]
        if m := re.search(r'lastmodified >= now\("-(\d+)m"\)', cql):
            since = dt.datetime.now(dt.UTC).timestamp() - int(m.group(1)) * 60
            pages = [p for p in pages if dt.datetime.fromisoformat(p["when"].replace("Z", "+00:00")).timestamp() >= since]
        if "order by lastmodified" in cql:
            pages.sort(key=lambda p: p["when"])
        return pages

    def handle(self, request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return Response(json.dumps({"statusCode": 401, "message": "Unauthorized"}), status=401)
        args = dict(request.args)
        api = request.path[len(CONTEXT):]
        expand = args.get("expand", "")
        if api == "/rest/api/content":
            items = [p for p in self.pages.values() if p["space"] == args.get("spaceKey")
                     and p["status"] == args.get("status", "current")]
            return self._listing(api, sorted(items, key=lambda p: p["id"]), args, expand)
        if api == "/rest/api/content/search":
            return self._listing(api, self._search(args.get("cql", "")), args, expand)
        if m := re.fullmatch(r"/rest/api/content/(\d+)", api):
            page = self.pages.get(m.group(1))
            if page is None or page["status"] != args.get("status", "current"):
                return Response(json.dumps({"statusCode": 404, "message": f"No content found with id: {m.group(1)}"}),
                                status=404, content_type="application/json")
            return Response(json.dumps(self.page_json(page, expand)), content_type="application/json")
        if api == "/rest/api/space":
            return Response(json.dumps({"results": [], "size": 0, "_links": {}}), content_type="application/json")
        return Response("not found", status=404)


class ConfluenceSource(Source):
    """Pages of one space on a local HTTP server answering like Confluence's REST API."""

    kind = "confluence"
    reports_deletes = False  # CQL has no deletions; the periodic id reconciliation finds them
    stable_ids = True  # the page id survives a rename

    def __init__(self, tmp_path: Path, server: HTTPServer, setenv: Callable[[str, str], None]) -> None:
        super().__init__()
        self.fake = FakeConfluence(server)
        server.expect_request(re.compile("^/")).respond_with_handler(self.fake.handle)
        setenv(TOKEN_ENV, TOKEN)
        self.config_path = write_config(tmp_path, [{
            "name": NAME, "type": "confluence", "base_url": self.fake.base, "spaces": [SPACE], "token_env": TOKEN_ENV,
            "poll_interval": "1s", "reconcile_interval": "1h", "page_size": 3, "request_rate": 0, "max_retries": 1,
            "max_backoff": "10ms"}], limits=LIMITS)

    @staticmethod
    def _body(text: str) -> str:
        return f"<p>{escape(text)}</p>"

    def add(self, name: str, text: str) -> str:
        return self.fake.add(name, self._body(text))

    def edit(self, doc_id: str, text: str) -> None:
        self.fake.edit(doc_id, body=self._body(text))

    def delete(self, doc_id: str) -> None:
        del self.fake.pages[doc_id]

    def rename(self, doc_id: str, new_name: str) -> str:
        self.fake.edit(doc_id, title=new_name)
        return doc_id

    def expected(self, doc_id: str) -> Expected:
        from connectors.confluence import storage_to_html

        page = self.fake.pages[doc_id]
        webui = self.fake.page_json(page, "")["_links"]["webui"]
        return Expected(revision=str(page["version"]), uri=self.fake.base + webui, title=page["title"],
                        media_type="html", content=storage_to_html(page["title"], page["body"]).encode())

    def missing_id(self) -> str:
        return "999999"

    def bad_inputs(self) -> dict[str, str]:
        return {
            "empty": self.fake.add("Empty", ""),
            "oversized": self.fake.add("Oversized", self._body(OVERSIZED)),
            "odd name": self.fake.add("It's \"odd\"; DROP TABLE — ünïcode", self._body("A page with an odd title.")),
            "broken storage XHTML": self.fake.add("Broken", '<p>Unclosed <ac:structured-macro ac:name="code">'
                                                            "<ac:plain-text-body><![CDATA[x = 1"),
            "macros only": self.fake.add("Macros", '<ac:structured-macro ac:name="toc"/>'),
        }

    def outsiders(self) -> dict[str, str]:
        return {"page of a space not indexed": self.fake.add("Elsewhere", self._body("Not indexed."), space="OTHER")}

    def aliases(self, doc_id: str) -> dict[str, str]:
        return {"with a query": f"{doc_id}?status=current", "parent segment": f"{doc_id}/../{doc_id}",
                "with a fragment": f"{doc_id}#Intro", "leading zero": f"0{doc_id}", "trailing slash": f"{doc_id}/",
                "percent-encoded digit": f"%3{doc_id[0]}{doc_id[1:]}", "surrounding spaces": f" {doc_id} ",
                # Java's Long.parseLong, behind Confluence's REST API, reads full-width digits as digits.
                "full-width digits": "".join(chr(ord(c) - ord("0") + ord("\uff10")) for c in doc_id)}

    def nameless(self, doc_id: str) -> dict[str, str]:
        return {**super().nameless(doc_id), "beyond 64 bits": "9" * 25, "zero": "0", "negative": f"-{doc_id}",
                "not a number": "Alpha"}

    def make_reconcile_due(self, connector: Connector) -> None:
        # As if reconcile_interval had passed since the last full id listing.
        cursor = connector.load_cursor()  # type: ignore[attr-defined]
        assert cursor is not None, "the connector has no committed cursor yet"
        write_json_atomic(connector.cursor_path, {**cursor, "reconciled_at": 0})  # type: ignore[attr-defined]


# -- following a connector's changes -------------------------------------------------------------------------
class Feed:
    """The changes a connector reports: its watcher's hints, or its polls."""

    def __init__(self, source: Source, connector: Connector) -> None:
        self.source = source
        self.connector = connector
        self.hints: list[Change] = []
        self.watch: Watch | None = None

    def start(self) -> None:
        """Follow the source from now on: start the watcher, or bring a polled connector's cursor to the
        source's present (its first poll, a full listing, committed)."""
        watch = self.connector.watch(self.hints.append)
        if self.source.watched:
            assert watch is not None, "a watched connector returns its Watch"
            assert watch.is_alive()
            self.watch = watch
            return
        assert watch is None, "a polled connector has no watcher"
        changes = list(self.connector.poll() or [])
        if not changes or any(c.kind == "rescan" for c in changes):
            list(self.connector.list_documents())
        self.connector.commit_cursor()

    def changes(self, until: Callable[[list[Change]], bool], what: str) -> list[Change]:
        """The changes reported since the last call: for a watcher, once ``until`` holds for them (within a
        deadline); for a polled connector, one poll's, which must satisfy ``until``."""
        if self.watch is not None:
            def ready() -> list[Change] | None:
                seen = list(self.hints)
                return seen if until(seen) else None

            seen: list[Change] = wait_for(ready, timeout=15, what=what)
            del self.hints[:len(seen)]
            return seen
        changes = list(self.connector.poll() or [])
        assert until(changes), f"{what}: the poll reported {changes}"
        return changes

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()


def upserted(changes: list[Change], doc_id: str) -> bool:
    """Whether the changes say ``doc_id`` may hold new content."""
    return any((c.kind == "upsert" and c.doc_id == doc_id) or (c.kind == "move" and (c.dest_id or c.doc_id) == doc_id)
               for c in changes)


def removed(changes: list[Change], doc_id: str) -> bool:
    """Whether the changes say ``doc_id`` may be gone (deleted, or moved away)."""
    return any(c.doc_id == doc_id and c.kind in ("delete", "move") and c.dest_id != doc_id for c in changes)


def rescanned(changes: list[Change], doc_id: str) -> bool:
    """Whether the changes ask for a full comparison covering ``doc_id``."""
    return any(c.kind == "rescan" and (not c.doc_id or doc_id.startswith(c.doc_id.rstrip("/") + "/"))
               for c in changes)


def hinted_ids(changes: list[Change]) -> dict[str, float]:
    """The engine's hints for a batch of changes: every id they name, with when it was first seen."""
    out: dict[str, float] = {}
    for c in changes:
        for doc_id in (c.doc_id, c.dest_id):
            if doc_id is not None and c.kind != "rescan":
                out.setdefault(doc_id, c.seen_at)
    return out

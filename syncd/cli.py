"""The `syncd` command line (INTERFACE.md). Exit codes: 0 success, 1 a problem found, 2 usage or config error."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any, NamedTuple

from syncd import __version__
from syncd.errors import ConfigError, SyncdError
from syncd.search import SearchOptionError

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def _global_flags(p: argparse.ArgumentParser, *, default: Any) -> None:
    """The flags every command accepts, before or after its name (``syncd query --config x TEXT``)."""
    p.add_argument("--config", default=default, help="config file (default: $SYNCD_CONFIG, else ./syncd.toml)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncd", description="Keep a LanceDB vector index true to its sources.")
    p.add_argument("--version", action="version", version=f"syncd {__version__}")
    _global_flags(p, default=None)
    # After the command the same flags default to "not given", so they never undo one given before it.
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_parser_with(common))
    sub.add_parser("run", help="the service: catch up, then watch and poll; serves HTTP")
    s = sub.add_parser("sync", help="one-shot incremental catch-up, then exit")
    s.add_argument("--connector", help="only this connector")
    s.add_argument("--json", action="store_true", help="one JSON summary line on stdout")
    s.add_argument("--allow-mass-delete", action="store_true",
                   help="allow this run to delete more than sync.max_delete_fraction of a connector's documents")
    r = sub.add_parser("reindex", help="full rebuild from the sources, built aside and swapped in atomically")
    r.add_argument("--connector", help="only this connector (the others are copied over)")
    r.add_argument("--json", action="store_true")
    r.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="spread the rebuild over a Ray cluster (ADDRESS: its head HOST:PORT; default "
                        "[reindex] address)")
    q = sub.add_parser("query", help="hybrid search with citations")
    q.add_argument("text", help="the query; - reads one query per line from stdin")
    q.add_argument("-k", type=int, default=10, help="results to return (default 10)")
    q.add_argument("--connector")
    _filter_options(q)
    q.add_argument("--no-dedup", action="store_true",
                   help="keep results with the same text apart (by default they collapse into one, with also_in)")
    q.add_argument("--as-of", dest="as_of", metavar="TIME",
                   help="search the index as it was at TIME (ISO 8601, e.g. 2026-03-03T12:00:00Z)")
    q.add_argument("--json", action="store_true")
    h = sub.add_parser("history", help="the change journal of one document: every committed change, oldest first")
    h.add_argument("doc_id", metavar="DOC_ID")
    h.add_argument("--connector", help="only this connector's document of that id")
    h.add_argument("--json", action="store_true", help="one JSON line per entry")
    ev = sub.add_parser("eval", help="score retrieval on labelled queries: nDCG@k, recall@k, MRR")
    ev.add_argument("queries", help='a JSON lines file: {"query": "...", "relevant": ["doc id or uri", ...]}')
    ev.add_argument("-k", type=int, default=10, help="results scored per query (default 10)")
    ev.add_argument("--connector")
    _filter_options(ev)
    ev.add_argument("--json", action="store_true", help="one JSON object on stdout")
    st = sub.add_parser("status", help="the daemon's /status, or the same figures from the store")
    st.add_argument("--json", action="store_true")
    v = sub.add_parser("verify", help="compare the index with the sources; exit 1 on drift")
    v.add_argument("--repair", action="store_true", help="re-sync exactly the documents found out of sync")
    v.add_argument("--connector")
    v.add_argument("--json", action="store_true")
    m = sub.add_parser("model", help="the embedding model: `syncd model prepare`")
    msub = m.add_subparsers(dest="model_command", required=True, metavar="ACTION", parser_class=_parser_with(common))
    mp = msub.add_parser("prepare", help="export and cache what the embedding backend needs (the ONNX model), "
                         "then exit; the first start does it otherwise")
    mp.add_argument("--json", action="store_true", help="one JSON line on stdout")
    mc = sub.add_parser("mcp", help="the MCP server on stdin/stdout (tools search, get_document, list_sources), "
                        "for desktop agents; answered by the running daemon when there is one")
    mc.add_argument("--as", dest="principals", action="append", default=[], metavar="PRINCIPAL",
                    help="search and read as this principal when a tool call names none (repeatable); without "
                         "it, only documents everyone may read")
    return p


def _filter_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", help="only doc ids matching this glob (* also crosses folders)")
    p.add_argument("--updated-since", metavar="TIME", help="only documents synced at or after TIME (ISO 8601)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="only documents whose source metadata holds KEY=VALUE (repeatable; all must hold)")
    p.add_argument("--min-relevance", metavar="X",
                   help="leave out results below this relevance, 0-1 (default: [search] min_relevance)")
    p.add_argument("--as", dest="principals", action="append", default=[], metavar="PRINCIPAL",
                   help="search as this principal (user:NAME or group:NAME; repeatable); without it, only documents "
                        "everyone may read")


def _search_options(args: argparse.Namespace) -> Any:
    """The command's search options (SearchOptionError names a bad one)."""
    from syncd import search as search_mod
    from syncd.acl import PrincipalError, check_principal

    try:
        principals = tuple(check_principal(p) for p in args.principals)
    except PrincipalError as exc:
        raise search_mod.SearchOptionError("--as", str(exc)) from None
    return search_mod.check_options(search_mod.SearchOptions(
        principals=principals,
        k=args.k, connector=args.connector, path=args.path,
        updated_since=search_mod.parse_time(args.updated_since, "--updated-since") if args.updated_since else None,
        metadata=search_mod.parse_metadata(args.meta, "--meta"),
        min_relevance=(search_mod.parse_relevance(args.min_relevance, "--min-relevance")
                       if args.min_relevance is not None else None),
        dedup=not getattr(args, "no_dedup", False),
        as_of=search_mod.parse_as_of(args.as_of, "--as-of") if getattr(args, "as_of", None) is not None else None))
def _parser_with(common: argparse.ArgumentParser) -> Any:
    """A parser class whose instances (the subcommands) also accept the global flags."""

    class Parser(argparse.ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["parents"] = [*kwargs.get("parents", []), common]
            super().__init__(*args, **kwargs)

    return Parser


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _configure_logging(cfg: Any) -> None:
    from syncd.logs import configure

    configure(cfg.logging.level, cfg.logging.format)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "run":
        from syncd.alloc import limit_malloc_arenas

        limit_malloc_arenas()  # batch commands, before LanceDB's and torch's thread pools start
    from syncd import config as config_mod

    try:
        cfg = config_mod.load(args.config)
        if getattr(args, "connector", None):
            cfg.connector(args.connector)
        if args.command in ("query", "eval") and not 1 <= args.k <= 1000:
            raise ConfigError("-k must be between 1 and 1000")
        if args.command in ("query", "eval"):
            args.options = _search_options(args)
    except (ConfigError, SearchOptionError) as exc:
        sys.stderr.write(f"syncd: {exc}\n")
        return EXIT_USAGE
    if args.command != "query":  # query asks the daemon first: structlog is set up only if it searches here
        _configure_logging(cfg)
    try:
        _check_local_paths(cfg, args)
        return int(_COMMANDS[args.command](cfg, args))
    except ConfigError as exc:
        sys.stderr.write(f"syncd: {exc}\n")
        return EXIT_USAGE
    except SyncdError as exc:
        sys.stderr.write(f"syncd: {exc}\n")
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return 130


_WRITERS = ("run", "sync", "reindex", "model")


def _check_local_paths(cfg: Any, args: argparse.Namespace) -> None:
    """The folders and the model the command will use exist as the config says (ConfigError naming the key),
    before anything is opened: a state folder that is a file or read-only is a config error, not a traceback."""
    from syncd import config as config_mod

    writes = args.command in _WRITERS or (args.command == "verify" and args.repair)
    config_mod.check_local_paths(cfg, write=writes)
    # status and query ask the daemon first (its model is loaded); without one, the model is resolved then.
    if args.command not in ("status", "query"):
        from syncd.embedding import resolve_model_path

        resolve_model_path(cfg.embedding.model, base_dir=cfg.base_dir)


def _runtime(cfg: Any, **kwargs: Any) -> Any:
    """``Runtime(cfg, **kwargs)``; a state folder that cannot be written where the runtime needs it (a
    read-only one without the connectors' folders yet) is a config error naming ``state.dir``."""
    from pathlib import Path

    from syncd.runtime import Runtime

    try:
        return Runtime(cfg, **kwargs)
    except OSError as exc:
        target = Path(exc.filename) if isinstance(exc.filename, str) else None
        if target is None or not target.is_relative_to(cfg.state_dir):
            raise
        raise ConfigError(f"{cfg.source}: state.dir: cannot write {target}: {exc.strerror or exc}",
                          key="state.dir") from None


def _exit_code(summary: Any) -> int:
    """1 when a document or a connector failed; documents skipped with a reason (binary, empty, too large,
    a symlink out of the root) are reported but are not a failure of the run."""
    return EXIT_PROBLEM if summary.problems else EXIT_OK


def cmd_run(cfg: Any, args: argparse.Namespace) -> int:
    from syncd.service import Service

    service = Service(cfg)
    service.install_signals()
    try:
        service.start()
    except BaseException:
        service.shutdown()
        raise
    code = service.run_forever()
    # Everything is committed, saved and released by now; the interpreter's own teardown (native thread
    # pools of the model and of LanceDB's runtime) can take seconds more, which a service manager waits for.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_sync(cfg: Any, args: argparse.Namespace) -> int:
    from syncd.errors import ConnectorError
    from syncd.models import Failure, SyncSummary
    from syncd.runtime import WriterLocked

    try:
        rt = _runtime(cfg)
    except WriterLocked:
        if not args.allow_mass_delete:
            raise
        return _allow_mass_delete_in_daemon(cfg, args)
    try:
        summary = SyncSummary()
        if rt.open():
            summary.merge(rt.engine.rebuild(progress=sys.stderr.isatty() and not args.json))
        for name in rt.connectors:
            if args.connector and name != args.connector:
                continue
            try:
                poll = rt.connectors[name].poll()
            except ConnectorError as exc:
                # The source failed as a whole (remote down, auth): reported like a failed listing; no cursor moves.
                summary.merge(SyncSummary(failures=[Failure(connector=name, doc_id="", reason=str(exc),
                                                             holds_cursor=True)]))
                continue
            if poll is not None:
                seen = {}
                rescan = False
                for change in poll:
                    rescan = rescan or change.kind == "rescan"
                    for d in (change.doc_id, change.dest_id):
                        if d:
                            seen[d] = 0.0
                # Documents that failed in the engine after the cursor moved past them are tried again.
                seen.update(dict.fromkeys(rt.engine.retry_candidates(name), 0.0))
                # An allowed mass deletion needs the full comparison: the guard only lets reconcile through.
                part = (rt.engine.reconcile(name, allow_mass_delete=args.allow_mass_delete)
                        if rescan or args.allow_mass_delete else rt.engine.process({name: seen}))
                if rt.engine.cursor_may_advance(part, name):
                    rt.connectors[name].commit_cursor()
            else:
                part = rt.engine.reconcile(name, allow_mass_delete=args.allow_mass_delete)
            summary.merge(part)
        rt.state.save(only_dirty=False)
        _count_model_load(summary, rt)
    finally:
        rt.close()
    _report(summary, args.json)
    return _exit_code(summary)


def _count_model_load(summary: Any, rt: Any) -> None:
    """``model_load_seconds`` of this run, inside ``seconds``: the model loads lazily within the engine's timed
    calls (at the first text to embed); the ONNX export, when this start did it, ran before them."""
    summary.model_load_seconds = rt.model_load_seconds
    summary.seconds += rt.backend.export_seconds


def _allow_mass_delete_in_daemon(cfg: Any, args: argparse.Namespace) -> int:
    """The service holds the writer lock: hand it the allowed reconcile and print what it did."""

    from syncd.approvals import request_mass_delete, wait_answer
    from syncd.models import Failure, SyncSummary

    alive = _daemon_alive(cfg)
    names = [args.connector] if args.connector else [c.name for c in cfg.connectors]
    summary = SyncSummary()
    for name in names:
        path = request_mass_delete(cfg.state_dir, name)
        result = wait_answer(path, timeout=3600, alive=alive)
        if result is None:
            raise SyncdError(f"the running service did not answer the request for connector {name!r}; "
                             f"it stays in {path} and is picked up when the service runs")
        if "error" in result:
            raise SyncdError(str(result["error"]))
        part = SyncSummary(**{k: v for k, v in result.items() if k != "failures"})
        part.failures = [Failure(**f) for f in result.get("failures", [])]
        summary.merge(part)
    _report(summary, args.json)
    return _exit_code(summary)


def _daemon_alive(cfg: Any) -> Any:
    import os

    from syncd.state import read_json

    info = read_json(cfg.state_dir / "daemon.json") or {}

    def alive() -> bool:
        try:
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError):
            return False
        return True

    return alive


def _repair_in_daemon(cfg: Any, args: argparse.Namespace) -> int:
    """The service holds the writer lock: hand it the repair and print what it found and did."""
    from syncd.approvals import request_repair, wait_answer

    path = request_repair(cfg.state_dir, args.connector)
    answer = wait_answer(path, timeout=3600, alive=_daemon_alive(cfg))
    if answer is None:
        raise SyncdError(f"the running service did not answer the repair request; it stays in {path} and is "
                         "picked up when the service runs")
    result = {**answer["after"], "before": answer["before"]}
    if "repaired" in answer:
        result["repaired"] = answer["repaired"]
    ok = bool(answer["after"]["ok"])
    if args.json:
        _emit(result)
    else:
        print(f"checked {result['checked_docs']} documents (by the running service): {'in sync' if ok else 'DRIFT'}")
        for kind in ("missing", "stale", "orphaned", "duplicated"):
            for e in answer["before"][kind]:
                print(f"  {kind}: {e['connector']}:{e['doc_id']}{' (repaired)' if ok else ''}")
    return EXIT_OK if ok else EXIT_PROBLEM


def cmd_reindex(cfg: Any, args: argparse.Namespace) -> int:
    if getattr(args, "ray", None) is not None or cfg.reindex.engine == "ray":
        return _reindex_on_cluster(cfg, args)
    rt = _runtime(cfg)
    try:
        rt.open(load_index=False)  # the rebuild writes a new table; this process exits after it
        summary = rt.engine.rebuild(only=args.connector, progress=sys.stderr.isatty() and not args.json,
                                    reload_index=False)
        _count_model_load(summary, rt)
    finally:
        rt.close()
    _report(summary, args.json)
    return _exit_code(summary)


def _reindex_on_cluster(cfg: Any, args: argparse.Namespace) -> int:
    """``reindex --ray``: the cluster reads, chunks, embeds and writes; this process lists and commits once."""
    from syncd import cluster

    address = getattr(args, "ray", None) or cfg.reindex.address
    cluster.check_reachable(address)  # before the model and the store are opened: exit 2 at once
    rt = _runtime(cfg)
    try:
        rt.open(load_index=False)
        summary, figures = cluster.reindex(rt, address=address, only=args.connector,
                                           progress=sys.stderr.isatty() and not args.json)
    finally:
        rt.close()
    if args.json:
        _emit({**summary.as_dict(), **figures})
    else:
        _report(summary, False)
        for node in figures["nodes"]:
            print(f"  node {node['host']} {node['node'][:12]}: {node['docs_read']} documents read, "
                  f"{node['chunks_embedded']} chunks embedded by {node['actors']} actors, "
                  f"peak {node['peak_rss_mb']:.0f} MiB")
    return _exit_code(summary)


def _report(summary: Any, as_json: bool) -> None:
    data = summary.as_dict()
    if as_json:
        _emit(data)
        return
    print(f"{data['docs_seen']} documents seen: {data['docs_added']} added, {data['docs_changed']} changed, "
          f"{data['docs_deleted']} deleted, {data['docs_renamed']} renamed, {data['docs_unchanged']} unchanged, "
          f"{data['docs_failed']} failed, {data['docs_skipped']} skipped; {data['chunks_embedded']} chunks embedded, "
          f"{data['chunks_reused']} reused, {data['chunks_deleted']} deleted in {data['seconds']:.2f} s")
    for f in data["failures"]:
        print(f"  {'skipped' if f['skipped'] else 'failed'}: {f['connector']}:{f['doc_id']}: {f['reason']}")


def cmd_query(cfg: Any, args: argparse.Namespace) -> int:
    """Asks the running daemon when there is one (its model is loaded; this process then imports neither the
    model nor LanceDB); loads them here only when no daemon runs or the one that runs does not answer."""
    from syncd.client import Daemon, DaemonRejected, DaemonUnavailable

    queries = [line.strip() for line in sys.stdin if line.strip()] if args.text == "-" else [args.text]
    daemon = Daemon.find(cfg)
    index: Any = None
    for text in queries:
        result = None
        if daemon is not None:
            try:
                result = daemon.search(text, args.options)
            except DaemonRejected as exc:
                raise ConfigError(str(exc)) from None
            except DaemonUnavailable as exc:
                sys.stderr.write(f"syncd: the daemon {exc}; searching the store in this process\n")
                daemon = None
        if result is None:
            if index is None:
                _configure_logging(cfg)
                from syncd.api import Index
                from syncd.embedding import resolve_model_path

                resolve_model_path(cfg.embedding.model, base_dir=cfg.base_dir)  # a missing model: ConfigError
                index = Index(cfg)
            found = index.answer(text, args.options)
            result = {"query": text, "table_version": found.table_version, "results": found.results}
        if args.json or args.text == "-":
            _emit(result)
            continue
        if not result["results"]:
            print("no results")
        for i, r in enumerate(result["results"], 1):
            where = " > ".join(r["heading_path"])
            print(f"{i}. [relevance {r['relevance']:.2f}] {r['connector']}:{r['doc_id']} "
                  f"lines {r['start_line']}-{r['end_line']}{' (' + where + ')' if where else ''} @ {r['revision'][:12]}")
            print(f"   {r['uri']}")
            for other in r["also_in"]:
                print(f"   also in {other['connector']}:{other['doc_id']} lines {other['start_line']}-{other['end_line']}")
            snippet = " ".join(r["text"].split())
            print(f"   {snippet[:200]}{'…' if len(snippet) > 200 else ''}")
    return EXIT_OK


def cmd_eval(cfg: Any, args: argparse.Namespace) -> int:
    from syncd import evaluate
    from syncd.api import Index

    labelled = evaluate.read_queries(args.queries)
    index = Index(cfg)
    report = evaluate.evaluate(labelled, lambda text: index.answer(text, args.options).results, k=args.k)
    if args.json:
        _emit(report)
        return EXIT_OK
    for q in report["per_query"]:
        print(f"nDCG {q['ndcg']:.3f}  recall {q['recall']:.3f}  RR {q['mrr']:.3f}  {q['query']}")
        for missing in q["missing"]:
            print(f"    not in the first {args.k}: {missing}")
    print(f"{report['queries']} queries, k = {report['k']}: nDCG@{report['k']} {report['ndcg']:.4f}, "
          f"recall@{report['k']} {report['recall']:.4f}, MRR {report['mrr']:.4f}")
    return EXIT_OK


def cmd_mcp(cfg: Any, args: argparse.Namespace) -> int:
    """`syncd mcp`: the MCP server over stdio, answered through ``open_index`` (the daemon when one runs)."""
    from syncd.acl import PrincipalError, check_principal
    from syncd.mcp_server import serve_stdio

    try:
        principals = tuple(check_principal(p) for p in args.principals)
    except PrincipalError as exc:
        print(f"syncd mcp: --as: {exc}", file=sys.stderr)
        return EXIT_USAGE
    serve_stdio(cfg, principals)
    return EXIT_OK


def cmd_status(cfg: Any, args: argparse.Namespace) -> int:
    daemon = _daemon_status(cfg)
    data = daemon.data
    if daemon.problem:
        sys.stderr.write(f"syncd: the daemon {daemon.problem}; the figures come from the store\n")
    if data is None:
        from syncd.service import build_status

        rt = _runtime(cfg, lock=False)
        try:
            rt.store.open(create=False)
            rt.engine.load_index()
            data = build_status(rt)
            for c in data["connectors"]:
                c["state"] = "stopped"
        finally:
            rt.close()
        data["daemon"] = None
        if daemon.problem:
            data["daemon_problem"] = daemon.problem
    code = EXIT_PROBLEM if daemon.problem else EXIT_OK
    if args.json:
        _emit(data)
        return code
    if data.get("daemon"):
        where = f"running at {data['daemon']}"
    elif daemon.problem:
        where = f"{daemon.problem}; figures from the store"
    else:
        where = "not running"
    store = data["store"]
    print(f"syncd {data['version']}: daemon {where}")
    print(f"store {store['uri']} table {store['table']} v{store['table_version']}: {store['docs']} docs, "
          f"{store['chunks']} chunks")
    if store.get("daemons") is not None:
        print(f"  {len(store['daemons'])} daemon(s) share this store:")
        for d in store["daemons"]:
            role = ", maintenance" if d["maintenance"] else ""
            print(f"    {d['id']} on {d['host']}: {', '.join(d['connectors']) or 'no connectors'}{role} "
                  f"(heartbeat {d['heartbeat_at']})")
    embedding = data.get("embedding") or {}
    if embedding.get("backend"):
        print(f"embedding {embedding.get('model')} on {embedding['backend']}: {embedding.get('backend_reason', '')}")
    for c in data["connectors"]:
        print(f"  {c['name']} ({c['type']}): {c['state']}, {c['docs']} docs, {c['chunks']} chunks, lag {c['lag_s']} s, "
              f"backlog {c['backlog']}, {c['failed_docs']} failed")
        if c.get("mass_delete_blocked"):
            b = c["mass_delete_blocked"]
            print(f"    MASS DELETE BLOCKED: {b['would_delete']} of {b['total']} documents would be deleted; run "
                  f"`syncd sync --connector {c['name']} --allow-mass-delete` to allow")
        if c["last_error"]:
            print(f"    last error: {c['last_error']}")
    return code


class _Daemon(NamedTuple):
    data: dict[str, Any] | None
    """The daemon's /status, or None when there is no daemon or it did not answer."""
    problem: str | None = None
    """Why a daemon that runs did not answer (the figures then come from the store)."""


def _daemon_status(cfg: Any) -> _Daemon:
    """The running daemon's /status, found through the state folder. A daemon that refuses the token is a
    config error naming the token setting; one that runs but does not answer is a problem, not "not running"."""
    from syncd.client import Daemon, DaemonRejected, DaemonUnavailable

    daemon = Daemon.find(cfg)
    if daemon is None:
        return _Daemon(None)
    daemon = dataclasses.replace(daemon, timeout=5.0)
    try:
        data = daemon.status()
    except (DaemonUnavailable, DaemonRejected) as exc:
        return _Daemon(None, str(exc))
    data["daemon"] = daemon.url
    return _Daemon(data)


def cmd_verify(cfg: Any, args: argparse.Namespace) -> int:
    from syncd.runtime import WriterLocked
    from syncd.verify import repair, verify

    try:
        rt = _runtime(cfg, lock=args.repair)
    except WriterLocked:
        return _repair_in_daemon(cfg, args)
    try:
        rt.store.open(create=False)
        rt.engine.load_index()
        report = verify(rt, connector=args.connector)
        result = report.as_dict()
        if args.repair and not report.ok:
            summary = repair(rt, report)
            rt.state.save(only_dirty=False)
            after = verify(rt, connector=args.connector)
            result = {**after.as_dict(), "repaired": summary.as_dict(), "before": report.as_dict()}
            report = after
    finally:
        rt.close()
    if args.json:
        _emit(result)
    else:
        print(f"checked {result['checked_docs']} documents: {'in sync' if report.ok else 'DRIFT'}")
        for kind in ("missing", "stale", "orphaned", "duplicated"):
            for e in result[kind]:
                print(f"  {kind}: {e['connector']}:{e['doc_id']}")
        for e in result.get("foreign", []):
            print(f"  written by someone else: {e['detail']}")
        for e in result.get("errors", []):
            print(f"  not checked: {e['connector']}: {e['reason']}")
    return EXIT_OK if report.ok else EXIT_PROBLEM


def cmd_model(cfg: Any, args: argparse.Namespace) -> int:
    """`syncd model prepare`: choose the backend as a start would and do its one-time ONNX export now."""
    from syncd.embedding import from_config
    from syncd.runtime import choose_backend

    choice = choose_backend(cfg, prepare=True)
    result: dict[str, Any] = {"backend": choice.backend, "backend_reason": choice.reason,
                              "configured": choice.configured, "exported": choice.export_seconds > 0,
                              "export_seconds": round(choice.export_seconds, 3), "path": None}
    if choice.backend != "torch":
        result["path"] = str(from_config(cfg, backend=choice.backend).onnx_path)  # type: ignore[union-attr]
    if args.json:
        _emit(result)
        return EXIT_OK
    print(f"embedding backend {choice.backend} ({choice.configured} in the config): {choice.reason}")
    if result["path"] is None:
        print("  nothing to export: PyTorch loads the model folder as it is")
    elif result["exported"]:
        print(f"  exported {result['path']} in {choice.export_seconds:.1f} s")
    else:
        print(f"  ready: {result['path']} (exported earlier; every start of this install reuses it)")
    return EXIT_OK


def cmd_history(cfg: Any, args: argparse.Namespace) -> int:
    """`syncd history DOC_ID`: read from the store's change journal (no model, no daemon needed)."""
    from syncd.api import history
    from syncd.audit import history_line
    from syncd.store import Store

    store = Store(cfg.store_uri, cfg.state_dir, base_table=cfg.store.table, dim=0, signature="",
                  **cfg.store.cache_limits())
    entries = history(store, args.doc_id, connector=args.connector)
    for entry in entries:
        if args.json:
            _emit(entry)
        else:
            print(history_line(entry))
    if not entries and not args.json:
        print(f"no changes recorded for {args.doc_id}")
    return EXIT_OK


_COMMANDS = {"run": cmd_run, "sync": cmd_sync, "reindex": cmd_reindex, "query": cmd_query, "eval": cmd_eval,
             "status": cmd_status, "verify": cmd_verify, "model": cmd_model, "history": cmd_history, "mcp": cmd_mcp}

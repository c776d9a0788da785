"""`syncd eval`: retrieval quality on the user's own labelled questions (nDCG@k, recall@k, MRR).

A labelled question is a JSON line ``{"query": "...", "relevant": ["doc id or uri", ...]}``. Results are
chunks, labels are documents: a result counts for a label when its ``doc_id`` or ``uri`` (or a citation in
its ``also_in``) is that label, and each label counts once, at the first result that finds it. Gains are
binary: DCG@k = sum over results i <= k of gain_i / log2(i + 1), divided by the DCG of an ideal list that
finds every label first (min(|relevant|, k) gains); recall@k = labels found / labels; the reciprocal rank is
1 / the rank of the first result that finds a label (0 when none does). Overall figures are the means over
the questions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.errors import ConfigError


@dataclass(frozen=True, kw_only=True, slots=True)
class Labelled:
    query: str
    relevant: tuple[str, ...]


def read_queries(path: str | Path) -> list[Labelled]:
    """The labelled questions of a JSON lines file; a bad line is a ConfigError naming the file and line."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text: {exc.reason}") from None
    out: list[Labelled] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise ConfigError(f'{where}: expected an object {{"query": ..., "relevant": [...]}}')
        query, relevant = data.get("query"), data.get("relevant")
        if not isinstance(query, str) or not query.strip():
            raise ConfigError(f"{where}: query: expected a non-empty string")
        if (not isinstance(relevant, list) or not relevant
                or not all(isinstance(r, str) and r for r in relevant)):
            raise ConfigError(f"{where}: relevant: expected a non-empty list of doc ids or uris")
        out.append(Labelled(query=query, relevant=tuple(dict.fromkeys(relevant))))
    if not out:
        raise ConfigError(f"{source}: no labelled queries")
    return out


def _places(result: dict[str, Any]) -> set[str]:
    places = {result.get("doc_id"), result.get("uri")}
    for other in result.get("also_in") or ():
        places.update((other.get("doc_id"), other.get("uri")))
    return {p for p in places if p}


def score_query(results: Sequence[dict[str, Any]], relevant: Sequence[str], k: int) -> dict[str, Any]:
    """nDCG@k, recall@k and the reciprocal rank of one question's results."""
    wanted = list(dict.fromkeys(relevant))
    ranks: dict[str, int] = {}
    dcg = 0.0
    for i, res in enumerate(results[:k], 1):
        new = [label for label in wanted if label not in ranks and label in _places(res)]
        if new:
            dcg += 1.0 / math.log2(i + 1)
            for label in new:
                ranks[label] = i
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(wanted), k) + 1))
    first = min(ranks.values()) if ranks else None
    return {"ndcg": dcg / ideal if ideal else 0.0, "recall": len(ranks) / len(wanted) if wanted else 0.0,
            "mrr": 1.0 / first if first else 0.0, "ranks": ranks,
            "missing": [label for label in wanted if label not in ranks]}


def evaluate(labelled: Sequence[Labelled], search: Callable[[str], list[dict[str, Any]]], *, k: int) -> dict[str, Any]:
    """The `syncd eval --json` document: per question and the means over all of them."""
    per_query = []
    for item in labelled:
        scored = score_query(search(item.query), item.relevant, k)
        per_query.append({"query": item.query, "relevant": list(item.relevant), **scored})
    n = len(per_query)

    def mean(key: str) -> float:
        return sum(q[key] for q in per_query) / n if n else 0.0

    return {"k": k, "queries": n, "ndcg": mean("ndcg"), "recall": mean("recall"), "mrr": mean("mrr"),
            "per_query": per_query}

"""Deterministic, realistic Markdown corpora for the benchmarks.

Document ``i`` of seed ``s`` is the same whatever the corpus size, so the 1k corpus is a prefix of the 10k
one. Pages have a title, sections with headings, paragraphs of varied English drawn from a Zipf-weighted
vocabulary plus the page's own topic terms, bullet lists, tables and fenced code blocks. Sizes follow a
log-normal distribution (median about 4 KB) clipped to 1–50 KB, as in real handbooks and wikis.

Each page also gets a short "fact" sentence with rare words, from which ``labelled_queries`` builds
queries whose answer page is known (for nDCG@10 when comparing embedding backends).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path

GENERATOR_VERSION = "1"

_COMMON = """the of and to a in is that for it as with be on not this by are or from at an have which but was
can will all we if one more when use there their about so these may also other into only some each new
should than then them such after before most where while how our any over because under every between
through during without within again further both same very often usually never always already still
""".split()

_TECH = """service database replica backup deploy rollback incident alert metric latency cache queue worker
config secret token policy review release branch merge test build pipeline cluster node volume network
firewall certificate rotate schedule owner escalate runbook dashboard query index shard partition
retention archive restore audit access role permission team handbook onboarding request response timeout
retry budget quota capacity migration schema table column storage bucket object upload download region
zone failover primary secondary leader follower consensus snapshot checkpoint ledger invoice customer
account billing payment refund ticket support contract vendor license compliance privacy encryption key
vault gateway proxy balancer endpoint route handler session cookie login password mfa identity directory
group member invite approval workflow document template page section draft publish comment feedback
sprint roadmap milestone estimate priority severity outage postmortem timeline root cause action item
owner oncall pager rotation handover shift weekend holiday laptop printer office travel expense report
hiring interview candidate offer salary benefit vacation training course mentor career ladder promotion
""".split()

_VERBS = """check verify ensure restart configure update remove create enable disable monitor review approve
escalate notify document measure compare reduce increase migrate rotate archive restore deploy rollback
schedule assign close open resolve investigate summarise attach export import validate""".split()

_RARE = """amber basalt cobalt dune ember fjord garnet harbor indigo jasper kestrel lagoon marble nectar onyx
opal pebble quartz raven saffron tundra umber velvet willow xenon yarrow zephyr birch cedar delta falcon
glacier heron iris juniper kelp lotus maple nimbus orchid prairie quill reef sierra thistle violet walnut
""".split()

_LANGS = ("bash", "python", "yaml", "json", "sql", "toml")


def _zipf_weights(n: int, s: float = 1.05) -> list[float]:
    return [1.0 / math.pow(rank + 1, s) for rank in range(n)]


_VOCAB = _COMMON + _TECH + _VERBS
_CUM = list(itertools.accumulate(_zipf_weights(len(_VOCAB))))


@dataclass(frozen=True, slots=True)
class Page:
    """One generated page: where it goes, its text, and the fact only it states."""

    rel_path: str
    text: str
    fact: str
    fact_query: str


class _Writer:
    def __init__(self, rng: random.Random, topic: list[str]) -> None:
        self.rng = rng
        self.topic = topic

    def word(self) -> str:
        return self.words(1)[0]

    def words(self, n: int) -> list[str]:
        words = self.rng.choices(_VOCAB, cum_weights=_CUM, k=n)
        for _ in range(max(1, n // 8)):
            words[self.rng.randrange(n)] = self.rng.choice(self.topic)
        return words

    def sentence(self, lo: int = 7, hi: int = 22) -> str:
        words = self.words(self.rng.randint(lo, hi))
        if self.rng.random() < 0.15:
            words.insert(self.rng.randrange(len(words)), f"{self.rng.randint(2, 500)}")
        text = " ".join(words)
        return text[0].upper() + text[1:] + self.rng.choice(".....?!")[0]

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(2, 7)))

    def bullet_list(self) -> str:
        return "\n".join(f"- {self.sentence(4, 12)}" for _ in range(self.rng.randint(3, 7)))

    def table(self) -> str:
        cols = [self.word() for _ in range(self.rng.randint(2, 4))]
        rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for _ in range(self.rng.randint(2, 6)):
            rows.append("| " + " | ".join(self.word() for _ in cols) + " |")
        return "\n".join(rows)

    def code(self) -> str:
        lang = self.rng.choice(_LANGS)
        lines = []
        for _ in range(self.rng.randint(3, 14)):
            a, b = self.word(), self.word()
            if lang == "python":
                lines.append(f"{a}_{b} = {self.word()}({self.rng.randint(0, 99)})")
            elif lang in ("yaml", "toml"):
                lines.append(f"{a}_{b}{': ' if lang == 'yaml' else ' = '}{self.rng.randint(0, 999)}")
            elif lang == "sql":
                lines.append(f"SELECT {a}, {b} FROM {self.word()} WHERE {a} > {self.rng.randint(0, 99)};")
            else:
                lines.append(f"syncd-{a} --{b} {self.word()}")
        return f"```{lang}\n" + "\n".join(lines) + "\n```"


def page(seed: int, index: int) -> Page:
    """Page ``index`` of the corpus with ``seed`` (independent of the corpus size)."""
    rng = random.Random(seed * 1_000_003 + index)
    topic = rng.sample(_TECH, 4)
    w = _Writer(rng, topic)
    target = int(min(50_000, max(1_000, rng.lognormvariate(math.log(4_000), 0.8))))
    fact_words = rng.sample(_RARE, 3)
    fact = (f"The {fact_words[0]} {topic[0]} for page {index} uses the {fact_words[1]} {topic[1]} "
            f"and reports to the {fact_words[2]} team.")
    fact_query = f"which {topic[1]} does the {fact_words[0]} {topic[0]} use with the {fact_words[2]} team"
    title = f"{topic[0].capitalize()} {topic[1]}: {w.sentence(3, 6).rstrip('.?!')}"
    parts = [f"# {title}", w.paragraph()]
    size = sum(len(p) for p in parts)
    section = 0
    fact_at = rng.randint(1, 3)
    while size < target:
        section += 1
        parts.append(f"## {w.sentence(2, 5).rstrip('.?!')}")
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.62:
                parts.append(w.paragraph())
            elif kind < 0.78:
                parts.append(w.bullet_list())
            elif kind < 0.9:
                parts.append(w.code())
            elif kind < 0.95:
                parts.append(w.table())
            else:
                parts.append(f"### {w.sentence(2, 4).rstrip('.?!')}\n\n{w.paragraph()}")
        if section == fact_at:
            parts.append(w.paragraph() + " " + fact)
        size = sum(len(p) + 2 for p in parts)
    if section < fact_at:
        parts.append(fact)
    team = _TECH[index % 37]
    area = _TECH[(index // 37) % 53]
    rel = f"{team}/{area}/page-{index:06d}.md"
    return Page(rel_path=rel, text="\n\n".join(parts) + "\n", fact=fact, fact_query=fact_query)


def write_corpus(root: Path, seed: int, count: int) -> int:
    """Write ``count`` pages under ``root``; returns the bytes written."""
    total = 0
    made: set[Path] = set()
    for i in range(count):
        p = page(seed, i)
        path = root / p.rel_path
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        data = p.text.encode()
        path.write_bytes(data)
        total += len(data)
    return total


def labelled_queries(seed: int, count: int, n: int = 200) -> list[tuple[str, str]]:
    """``n`` (query, answer doc_id) pairs over a corpus of ``count`` pages, spread evenly."""
    step = max(1, count // n)
    out = []
    for i in range(0, count, step)[:n]:
        p = page(seed, i)
        out.append((p.fact_query, p.rel_path))
    return out

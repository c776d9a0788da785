"""Deterministic realistic documents for tests (seeded): Markdown pages with headings, lists and code."""

from __future__ import annotations

import random

WORDS = ("service database replica backup deploy rollback incident alert metric latency cache queue worker "
         "config secret token policy review release branch merge test build pipeline cluster node volume "
         "network firewall certificate rotate schedule owner escalate runbook dashboard query index shard "
         "partition retention archive restore audit access role permission team handbook onboarding").split()


def sentence(rng: random.Random, n: int | None = None) -> str:
    words = [rng.choice(WORDS) for _ in range(n or rng.randint(8, 18))]
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random, sentences: int | None = None) -> str:
    return " ".join(sentence(rng) for _ in range(sentences or rng.randint(3, 6)))


def markdown_doc(seed: int, sections: int = 6, paras: int = 4) -> str:
    """A Markdown page: a title, ``sections`` sections of ``paras`` paragraphs, a list and a code block."""
    rng = random.Random(seed)
    out = [f"# Page {seed}: {rng.choice(WORDS)} {rng.choice(WORDS)}", ""]
    for s in range(sections):
        out += [f"## Section {s} {rng.choice(WORDS)}", ""]
        for _ in range(paras):
            out += [paragraph(rng), ""]
        if s % 2 == 0:
            out += [f"- {sentence(rng, 5)}", f"- {sentence(rng, 6)}", ""]
        if s % 3 == 1:
            out += ["```bash", f"syncd query \"{rng.choice(WORDS)}\" -k 5", "```", ""]
    return "\n".join(out)

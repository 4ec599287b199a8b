"""Build the demo data shipped in the package: a slice of SQuAD v1.1 dev in BEIR layout, and
every WordNet 3.0 gloss.

SQuAD is CC BY-SA 4.0 and may be redistributed with attribution; WordNet's license permits
redistribution with its copyright notice. Both are written beside the data.
Run from the repository root:  python scripts/make_demo_sample.py ../shared/data
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

EVERY_NTH_PARAGRAPH = 5
QUESTIONS_PER_PARAGRAPH = 2
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "matryoshka" / "sample"
TARGET = SAMPLE / "squad"
ADJECTIVE_MARKER = re.compile(r"\((a|p|ip)\)$")

ATTRIBUTION = """# Demo corpus: a slice of SQuAD v1.1 (dev)

Source: SQuAD v1.1 development set, Rajpurkar et al. 2016, "SQuAD: 100,000+ Questions for Machine
Comprehension of Text", https://rajpurkar.github.io/SQuAD-explorer/ . Paragraphs are from Wikipedia.
License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). This slice is shared under
the same license.

Changes: none to any text. Every {nth}th paragraph of the dev set was kept, with the first {q}
questions written on it, in BEIR layout (corpus.jsonl.gz, queries.jsonl.gz, qrels/dev.tsv);
built by scripts/make_demo_sample.py.
"""


WORDNET_NOTICE = """# Demo corpus: every gloss of WordNet 3.0

Source: Princeton WordNet 3.0, https://wordnet.princeton.edu/ (the data.noun, data.verb, data.adj
and data.adv files of Debian's wordnet-base package). Each line of glosses.jsonl.gz is one synset:
"id" is its first lemma, part of speech and byte offset (e.g. "dog.n.02084071"), "lemmas" its
words (underscores as spaces, adjective markers such as "(a)" removed), and "text" its gloss,
unchanged. Built by scripts/make_demo_sample.py.

WordNet 3.0 license:

Permission to use, copy, modify and distribute this software and database and its documentation
for any purpose and without fee or royalty is hereby granted, provided that you agree to comply
with the following copyright notice and statements, including the disclaimer, and that the same
appear on ALL copies of the software, database and documentation, including modifications that
you make for internal use or for distribution.

WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS
OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY
MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANTABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR
THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY
PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.

The name of Princeton University or Princeton may not be used in advertising or publicity
pertaining to distribution of the software and/or database. Title to copyright in this software,
database and any associated documentation shall at all times remain with Princeton University and
LICENSEE agrees to preserve same.
"""


def wordnet(source: Path) -> None:
    """Every synset's gloss, with a readable id and its lemmas (the demo's lemma queries)."""
    target = SAMPLE / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    lines = []
    with gzip.open(source / "synsets.jsonl.gz", "rt", encoding="utf-8") as handle:
        for synset in map(json.loads, handle):
            lemmas = list(dict.fromkeys(ADJECTIVE_MARKER.sub("", lemma) for lemma in synset["lemmas"]))
            record = {
                "id": f"{lemmas[0]}.{synset['id'][0]}.{synset['id'][1:]}",
                "lemmas": [lemma.replace("_", " ") for lemma in lemmas],
                "text": synset["gloss"],
            }
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    with gzip.GzipFile(target / "glosses.jsonl.gz", "wb", mtime=0, compresslevel=9) as raw:
        raw.write("".join(lines).encode())
    (target / "NOTICE.md").write_text(WORDNET_NOTICE)
    print(f"{len(lines)} glosses -> {target}")


def squad(source: Path) -> None:
    with gzip.open(source / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        paragraphs = [json.loads(line) for line in handle]
    kept = {p["_id"]: p for p in paragraphs[::EVERY_NTH_PARAGRAPH]}
    with gzip.open(source / "queries.jsonl.gz", "rt", encoding="utf-8") as handle:
        queries = {q["_id"]: q for q in map(json.loads, handle)}
    by_paragraph: dict[str, list[str]] = defaultdict(list)
    for line in (source / "qrels" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        query_id, doc_id, _ = line.split("\t")
        if doc_id in kept and len(by_paragraph[doc_id]) < QUESTIONS_PER_PARAGRAPH:
            by_paragraph[doc_id].append(query_id)
    (TARGET / "qrels").mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(TARGET / "corpus.jsonl.gz", "wb", mtime=0) as raw:
        raw.write("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in kept.values()).encode())
    chosen = [q for doc in kept for q in by_paragraph[doc]]
    with gzip.GzipFile(TARGET / "queries.jsonl.gz", "wb", mtime=0) as raw:
        raw.write("".join(json.dumps(queries[q], ensure_ascii=False) + "\n" for q in chosen).encode())
    rows = [f"{q}\t{doc}\t1" for doc in kept for q in by_paragraph[doc]]
    (TARGET / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    (TARGET / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(nth=EVERY_NTH_PARAGRAPH, q=QUESTIONS_PER_PARAGRAPH))
    print(f"{len(kept)} paragraphs, {len(chosen)} questions -> {TARGET}")


if __name__ == "__main__":
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    squad(data / "squad")
    wordnet(data / "wordnet")

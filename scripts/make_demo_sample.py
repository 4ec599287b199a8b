"""Build the demo corpus shipped in the package: a slice of SQuAD v1.1 dev in BEIR layout.

SQuAD is CC BY-SA 4.0 and may be redistributed with attribution (written beside the data).
Run from the repository root:  python scripts/make_demo_sample.py ../shared/data/squad
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

EVERY_NTH_PARAGRAPH = 5
QUESTIONS_PER_PARAGRAPH = 2
TARGET = Path(__file__).resolve().parents[1] / "src" / "matryoshka" / "sample" / "squad"

ATTRIBUTION = """# Demo corpus: a slice of SQuAD v1.1 (dev)

Source: SQuAD v1.1 development set, Rajpurkar et al. 2016, "SQuAD: 100,000+ Questions for Machine
Comprehension of Text", https://rajpurkar.github.io/SQuAD-explorer/ . Paragraphs are from Wikipedia.
License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). This slice is shared under
the same license.

Changes: none to any text. Every {nth}th paragraph of the dev set was kept, with the first {q}
questions written on it, in BEIR layout (corpus.jsonl.gz, queries.jsonl.gz, qrels/dev.tsv);
built by scripts/make_demo_sample.py.
"""


def main(source: Path) -> None:
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
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/squad"))

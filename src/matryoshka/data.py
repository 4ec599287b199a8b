"""Readers for the data the project uses: STS Benchmark files, BEIR folders, and user files.

Every reader validates as it goes; a malformed record is a :class:`DataError` naming the file,
the line and the problem. Nothing is skipped silently.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .metadata import RESERVED_FIELDS, MetadataError, Schema, infer_schema, typed_cells

TEXT_SUFFIXES = (".jsonl", ".csv", ".tsv", ".txt")
FIRST_OF_PAIR = ("anchor", "sentence1", "query", "text1")
SECOND_OF_PAIR = ("positive", "sentence2", "document", "text2")
SCORE_FIELDS = ("score", "label")


@dataclass(frozen=True)
class Corpus:
    """Documents with unique string ids; ``texts`` are what gets encoded. ``metadata`` holds each
    document's other fields (``None``: the file has none), typed by ``schema``."""

    ids: list[str]
    texts: list[str]
    metadata: list[dict] | None = None
    schema: Schema | None = None
    numbered: bool = False  # the file gave no ids: they are its line numbers

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Pairs:
    """Text pairs: (anchor, positive[, negative]) for contrastive data, or scored pairs for STS."""

    first: list[str]
    second: list[str]
    negative: list[str] | None = None
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.first)


@dataclass(frozen=True)
class RetrievalData:
    """A retrieval benchmark: a corpus, the queries that have judgements, and graded qrels."""

    corpus: Corpus
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]


# --------------------------------------------------------------------------- files


def open_binary(path: Path | str) -> io.BufferedIOBase:
    """Open a file for reading bytes, transparently un-gzipping ``*.gz``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as exc:
        raise DataError(path, f"cannot be read: {exc.strerror or exc}") from None


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines, each decoded on its own, so that a byte that is not UTF-8 is reported on
    its own line (a decoder reading ahead in blocks would name the block's first line)."""
    with open_binary(path) as handle:
        number = 0
        try:
            for number, raw in enumerate(handle, start=1):
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        path, f"not valid UTF-8 ({exc.reason} at byte {exc.start + 1} of the line)", number
                    ) from None
        except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
            raise DataError(path, f"cannot be read: {exc}", number + 1) from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines without their line ending."""
    for number, line in _decoded_lines(path):
        yield number, line.rstrip("\r\n")


def _format_of(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    for suffix in TEXT_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    raise DataError(path, f"unknown file type; expected one of {', '.join(TEXT_SUFFIXES)} (optionally .gz)")


def read_records(path: Path | str) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, record)`` from JSONL, or CSV/TSV with a header row. TSV is split on tabs
    with no quoting (the STS habit); CSV follows RFC 4180 quoting."""
    path = Path(path)
    kind = _format_of(path)
    seen_any = False
    if kind == "jsonl":
        for number, line in _lines(path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"invalid JSON ({exc.msg} at column {exc.colno})", number) from exc
            if not isinstance(record, dict):
                raise DataError(path, f"expected a JSON object, got {type(record).__name__}", number)
            seen_any = True
            yield number, record
    elif kind in ("csv", "tsv"):
        header: list[str] | None = None
        rows = _csv_rows(path) if kind == "csv" else ((n, line.split("\t")) for n, line in _lines(path))
        for number, fields in rows:
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
                if len(set(header)) != len(header):
                    raise DataError(path, f"header has repeated column names: {header}", number)
                continue
            if len(fields) != len(header):
                raise DataError(path, f"expected {len(header)} fields as in the header, found {len(fields)}", number)
            seen_any = True
            yield number, dict(zip(header, fields))
    else:
        for number, line in _lines(path):
            if line.strip():
                seen_any = True
                yield number, {"id": str(number), "text": line}
    if not seen_any:
        raise DataError(path, "contains no records")


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    lines = _decoded_lines(path)
    reader = csv.reader(line for _, line in lines)
    try:
        for fields in reader:
            yield reader.line_num, fields
    except csv.Error as exc:
        raise DataError(path, f"malformed CSV: {exc}", reader.line_num) from exc


def _text_field(path: Path, number: int, record: dict, key: str, *, required: bool = True) -> str | None:
    value = record.get(key)
    if value is None:
        if required and key in record:
            raise DataError(path, f"field {key!r} is null; it must be a string", number)
        if required:
            raise DataError(path, f"missing field {key!r} (fields present: {', '.join(record) or 'none'})", number)
        return None
    if not isinstance(value, str):
        raise DataError(path, f"field {key!r} must be a string, got {type(value).__name__}", number)
    return value


def _pick(record: dict, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in record), None)


# --------------------------------------------------------------------------- texts and pairs


def read_texts(path: Path | str) -> Corpus:
    """Documents from JSONL/CSV/TSV (a ``text`` field, optional ``id``/``_id`` and ``title``),
    plain text (one document per line, ids are line numbers), or a BEIR folder's corpus. Every
    other field (column) of a JSONL (CSV/TSV) file is the document's metadata, typed per field
    (see :mod:`matryoshka.metadata`): a CSV/TSV column is a number column only when no digit
    would be lost, so zip codes (``02134``) and integers past 64 bits keep the column strings."""
    path = Path(path)
    if path.is_dir():
        return read_beir_corpus(path)
    ids: list[str] = []
    texts: list[str] = []
    metadata: list[dict] = []
    lines: list[int] = []
    seen: dict[str, int] = {}
    numbered = _format_of(path) == "txt"  # one text per line: its ids are the line numbers
    for number, record in read_records(path):
        text = _text_field(path, number, record, "text")
        title = _text_field(path, number, record, "title", required=False)
        numbered = numbered or ("_id" not in record and "id" not in record)
        doc_id = record.get("_id", record.get("id", str(number)))
        if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
            raise DataError(path, f"id must be a string or integer, got {type(doc_id).__name__}", number)
        doc_id = str(doc_id)
        if not doc_id.strip():
            raise DataError(path, "empty id", number)
        if doc_id in seen:
            raise DataError(path, f"duplicate id {doc_id!r} (first seen on line {seen[doc_id]})", number)
        if not text.strip() and not (title or "").strip():
            raise DataError(path, "empty text", number)
        seen[doc_id] = number
        ids.append(doc_id)
        texts.append(f"{title} {text}".strip() if title else text)
        metadata.append({k: v for k, v in record.items() if k not in RESERVED_FIELDS})
        lines.append(number)
    if not any(metadata):
        return Corpus(ids, texts, numbered=numbered)
    if _format_of(path) in ("csv", "tsv"):
        names = list(metadata[0])
        columns = typed_cells({name: [m[name] for m in metadata] for name in names})
        metadata = [{name: columns[name][i] for name in names} for i in range(len(metadata))]
    return Corpus(ids, texts, metadata, metadata_schema(path, metadata, lines), numbered)


def metadata_schema(path: Path, metadata: Sequence[dict], lines: Sequence[int]) -> Schema:
    """Each metadata field's type, checked on every record: a value that cannot be stored, or one
    whose type differs from the field's earlier values, is a DataError naming its line."""
    try:
        return infer_schema(metadata, lines, unit="line")
    except MetadataError as exc:
        raise DataError(path, str(exc), exc.record) from None


def read_ids(path: Path | str) -> list[str]:
    """Document ids, one per line, each exactly as written (an id may hold spaces, even at its
    ends); blank lines are skipped."""
    path = Path(path)
    ids = [line for _, line in _lines(path) if line.strip()]
    if not ids:
        raise DataError(path, "holds no ids")
    return ids


def read_pairs(path: Path | str) -> Pairs:
    """Pairs from JSONL/CSV/TSV. Columns: (anchor|sentence1|query|text1, positive|sentence2|document|text2)
    with an optional ``negative`` and an optional ``score``/``label`` (a float, for scored pairs)."""
    path = Path(path)
    first: list[str] = []
    second: list[str] = []
    negative: list[str] = []
    scores: list[float] = []
    layout: tuple | None = None
    for number, record in read_records(path):
        a_key, b_key = _pick(record, FIRST_OF_PAIR), _pick(record, SECOND_OF_PAIR)
        if a_key is None or b_key is None:
            raise DataError(
                path,
                f"a pair needs one of {FIRST_OF_PAIR} and one of {SECOND_OF_PAIR}; found fields {list(record)}",
                number,
            )
        s_key, has_negative = _pick(record, SCORE_FIELDS), "negative" in record
        if layout is None:
            layout = (s_key is not None, has_negative)
        elif layout != (s_key is not None, has_negative):
            raise DataError(path, "record has a different set of fields (score/negative) than the first record", number)
        a, b = _text_field(path, number, record, a_key), _text_field(path, number, record, b_key)
        if not a.strip() or not b.strip():
            raise DataError(path, "empty text in pair", number)
        first.append(a)
        second.append(b)
        if has_negative:
            negative.append(_text_field(path, number, record, "negative"))
        if s_key is not None:
            scores.append(_parse_score(path, number, record[s_key]))
    return Pairs(
        first,
        second,
        negative if layout and layout[1] else None,
        np.asarray(scores, dtype=np.float64) if layout and layout[0] else None,
    )


def _parse_score(path: Path, number: int, value: object, low: float | None = None, high: float | None = None) -> float:
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(path, f"score {value!r} is not a number", number) from None
    if not np.isfinite(score):
        raise DataError(path, f"score {value!r} is not finite", number)
    if low is not None and high is not None and not low <= score <= high:
        raise DataError(path, f"score {score} is outside {low}..{high}", number)
    return score


# --------------------------------------------------------------------------- STS Benchmark


def sts_file(path: Path | str, split: str) -> Path:
    """Resolve an STS Benchmark folder + split to its file (``sts-<split>.csv[.gz]``)."""
    path = Path(path)
    if path.is_file():
        return path
    for name in (f"sts-{split}.csv", f"sts-{split}.csv.gz"):
        if (path / name).is_file():
            return path / name
    raise DataError(path, f"no sts-{split}.csv or sts-{split}.csv.gz in this folder")


def read_sts(path: Path | str, split: str = "test") -> Pairs:
    """Scored pairs from the STS Benchmark's tab-separated files (7 or 9 fields, score 0..5).

    Split on tabs only: the sentences contain quote characters that a CSV reader would mangle.
    """
    file = sts_file(path, split)
    first: list[str] = []
    second: list[str] = []
    scores: list[float] = []
    for number, line in _lines(file):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) not in (7, 9):
            raise DataError(file, f"expected 7 or 9 tab-separated fields, found {len(fields)}", number)
        scores.append(_parse_score(file, number, fields[4], 0.0, 5.0))
        first.append(fields[5])
        second.append(fields[6])
    if not first:
        raise DataError(file, "contains no records")
    return Pairs(first, second, scores=np.asarray(scores, dtype=np.float64))


# --------------------------------------------------------------------------- BEIR


def _beir_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(folder, f"not a BEIR folder: no {stem}.jsonl or {stem}.jsonl.gz")


def read_beir_corpus(folder: Path | str) -> Corpus:
    """A BEIR ``corpus.jsonl[.gz]``: ``{"_id", "title", "text"}``; title and text joined by a space."""
    file = _beir_file(Path(folder), "corpus")
    ids: list[str] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    for number, record in read_records(file):
        doc_id = _beir_id(file, number, record)
        if doc_id in seen:
            raise DataError(file, f"duplicate _id {doc_id!r} (first seen on line {seen[doc_id]})", number)
        seen[doc_id] = number
        title = _text_field(file, number, record, "title", required=False) or ""
        text = _text_field(file, number, record, "text")
        ids.append(doc_id)
        texts.append(f"{title} {text}".strip())
    return Corpus(ids, texts)


def _beir_id(file: Path, number: int, record: dict) -> str:
    value = record.get("_id")
    if value is None:
        raise DataError(file, "missing field '_id'", number)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise DataError(file, f"'_id' must be a string or integer, got {type(value).__name__}", number)
    if not str(value).strip():
        raise DataError(file, "empty '_id'", number)
    return str(value)


def read_beir(folder: Path | str, split: str = "test") -> RetrievalData:
    """A BEIR folder: corpus, queries, and ``qrels/<split>.tsv`` (header ``query-id corpus-id score``).

    Every id in the qrels must exist; only queries with judgements are kept, in qrels order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a folder (a BEIR dataset is a folder with corpus, queries and qrels/)")
    corpus = read_beir_corpus(folder)
    queries_file = _beir_file(folder, "queries")
    queries: dict[str, str] = {}
    for number, record in read_records(queries_file):
        query_id = _beir_id(queries_file, number, record)
        if query_id in queries:
            raise DataError(queries_file, f"duplicate _id {query_id!r}", number)
        queries[query_id] = _text_field(queries_file, number, record, "text")
    qrels_file = folder / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise DataError(qrels_file, f"no qrels for split {split!r} (available: {', '.join(available) or 'none'})")
    doc_ids = set(corpus.ids)
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _lines(qrels_file):
        if not line.strip():
            continue
        fields = line.split("\t")
        if number == 1 and fields[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue
        if len(fields) != 3:
            raise DataError(
                qrels_file, f"expected 3 tab-separated fields (query-id, corpus-id, score), found {len(fields)}", number
            )
        query_id, doc_id, grade = (f.strip() for f in fields)
        if query_id not in queries:
            raise DataError(qrels_file, f"query id {query_id!r} is not in {queries_file.name}", number)
        if doc_id not in doc_ids:
            raise DataError(qrels_file, f"corpus id {doc_id!r} is not in the corpus", number)
        try:
            qrels.setdefault(query_id, {})[doc_id] = int(grade)
        except ValueError:
            raise DataError(qrels_file, f"score {grade!r} is not an integer", number) from None
    if not qrels:
        raise DataError(qrels_file, "contains no judgements")
    query_ids = list(qrels)
    return RetrievalData(corpus, query_ids, [queries[q] for q in query_ids], qrels)


def is_beir_folder(path: Path | str) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / n).is_file() for n in ("corpus.jsonl", "corpus.jsonl.gz"))


def is_sts_folder(path: Path | str) -> bool:
    path = Path(path)
    return path.is_dir() and any(path.glob("sts-*.csv*"))


# --------------------------------------------------------------------------- vectors


def read_vectors(path: Path | str, what: str = "vectors") -> np.ndarray:
    """A 2-D ``.npy`` array, memory-mapped (no pickles); a DataError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(path, f"not a .npy array of {what} ({exc})") from None
    if array.ndim != 2:
        raise DataError(path, f"{what} must be a 2-D array (rows x dims), got shape {array.shape}")
    return array


def write_vectors(path: Path | str, vectors: np.ndarray, ids: Sequence[str] | None = None) -> Path:
    """Write ``vectors`` as a ``.npy`` (and ``ids`` one per line beside it, ``<path>.ids.txt``),
    atomically: a reader never sees a half-written file."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder; give a file name ending in .npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as handle:
            np.save(handle, vectors)
        partial.replace(path)
        if ids is not None:
            path.with_name(path.name + ".ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DataError(path, f"cannot be written: {exc.strerror or exc}") from None
    return path


def write_json(path: Path | str, payload: object) -> Path:
    """Write ``payload`` as indented JSON, atomically; a DataError names a path that cannot take it."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, "is a folder; give a file name for the JSON")
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DataError(path, f"cannot be written: {exc.strerror or exc}") from None
    return path

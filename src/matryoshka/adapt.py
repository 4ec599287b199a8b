"""Post-hoc adapters that make a model's prefixes carry meaning (scikit-learn style).

An adapter maps full vectors to full vectors, ``f(x)``; its prefixes are then used for short
searches (the funnel's early stages), while the last stage uses the model's original vectors.
So ``f`` only has to make short prefixes rank like the full vectors do. Three kinds:

- ``pca``: the corpus' principal axes, most variance first (orthogonal, no centring).
- ``orthogonal``: the PCA rotation refined by gradient descent on the orthogonal group, so
  full-dimension cosines stay exactly what they were.
- ``learned``: a free linear map (optionally plus a small residual MLP) from the same start,
  in the spirit of Matryoshka-Adaptor (Yoon et al., EMNLP 2024).

The refined kinds are trained on what queries need, not on document-to-document similarity:
for query-like anchors (real queries, or sentences of the corpus encoded as queries)
each prefix's ranking of the anchor's nearest documents is pulled towards the full vectors'
ranking (a listwise KL over the top neighbours plus sampled others). Given (query, relevant
document) pairs, a contrastive ranking loss on every prefix is added. Learned state lives in
attributes ending with ``_`` and is saved as plain arrays (``.npz``).

*Query heads* (:func:`fit_query_heads`) go one step further for the funnel's first stage. The
index stores ``f(x)[:k]`` for documents, but nothing forces a query's head to be ``f(q)[:k]``: a
query-side map ``G_k`` (d × k) is trained on real queries so that each query's full-vector top-10
ranks inside the head's shortlist. Documents, the stored index and full-dimension results are
unchanged; only the head's query side moves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import AdapterError, ModelError
from .metrics import top_k
from .models import Encoder, TextKind
from .samples import pseudo_queries
from .vectors import check_dim, head_candidates, normalize, stage_dims, truncate

KINDS = ("pca", "orthogonal", "learned")


class NotFittedError(RuntimeError):
    """transform() was called before fit()."""


def _check_vectors(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise AdapterError(f"{what}: need at least 2 vectors in a 2-D array, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise AdapterError(f"{what}: contains NaN or infinite values")
    return vectors


class PCAAdapter:
    """Rotate vectors onto the principal axes of a reference set (most variance first).

    The rotation is orthogonal and applied without centring, so full-dimension cosines are
    unchanged; only the order of information along the prefix changes.
    """

    kind = "pca"

    def fit(
        self, vectors: np.ndarray, queries: np.ndarray | None = None, pairs: tuple[np.ndarray, np.ndarray] | None = None
    ) -> PCAAdapter:
        """``queries`` and ``pairs`` are accepted for a common signature and not used."""
        vectors = _check_vectors(vectors).astype(np.float64)
        self.mean_ = vectors.mean(axis=0)
        centred = vectors - self.mean_
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / (len(vectors) - 1))
        order = np.argsort(eigenvalues)[::-1]
        self.explained_variance_ = eigenvalues[order]
        self.components_ = eigenvectors[:, order].astype(np.float32)
        return self

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        if not hasattr(self, "components_"):
            raise NotFittedError("PCAAdapter.transform() called before fit()")
        return np.asarray(vectors, dtype=np.float32) @ self.components_

    def fit_transform(self, vectors: np.ndarray, **fit_args) -> np.ndarray:
        return self.fit(vectors, **fit_args).transform(vectors)

    def _state(self) -> dict[str, np.ndarray]:
        return {"components_": self.components_, "mean_": self.mean_, "explained_variance_": self.explained_variance_}

    def save(self, path: Path | str) -> Path:
        return save_adapter(self, path)


@dataclass
class FitSettings:
    """How the refined adapters are trained; the defaults fit 100k vectors on 2 cores in minutes."""

    dims: Sequence[int] | None = None  # prefix dims the loss looks at; default d/32 … d/2
    steps: int = 300
    batch_size: int = 128
    neighbours: int = 100  # full-vector top neighbours of each anchor whose order is taught
    sampled: int = 100  # random other documents per anchor, so the far end is taught too
    lr: float = 5e-4
    temperature: float = 0.05  # of the softmax rankings; 0.02 and 0.2 both did worse on SciFact's held-out queries
    supervised_weight: float = 1.0
    max_anchors: int = 20_000
    seed: int = 0
    progress: Callable[[int, float], None] | None = field(default=None, repr=False)


class _RefinedAdapter:
    """What the orthogonal and learned adapters share: the PCA start, the anchors, the losses."""

    kind = ""

    def __init__(self, settings: FitSettings | None = None, **overrides) -> None:
        self.settings = settings or FitSettings(**overrides)

    # the map itself, implemented by the subclasses in torch (fit) and numpy (transform)
    def _parameters(self, start: np.ndarray):
        raise NotImplementedError

    def _apply(self, x):
        raise NotImplementedError

    def _export(self) -> None:
        raise NotImplementedError

    def fit(
        self, vectors: np.ndarray, queries: np.ndarray | None = None, pairs: tuple[np.ndarray, np.ndarray] | None = None
    ) -> _RefinedAdapter:
        """``vectors``: the corpus' document vectors (unit rows). ``queries``: query-like vectors
        (default: the documents themselves). ``pairs``: (query vectors, row index of a relevant
        document in ``vectors``), for the supervised ranking loss."""
        import torch

        s = self.settings
        documents = _check_vectors(vectors, "corpus vectors")
        anchors = documents if queries is None else _check_vectors(queries, "query vectors")
        full_dim = documents.shape[1]
        dims = sorted(set(s.dims)) if s.dims else _loss_dims(full_dim)
        rng = np.random.default_rng(s.seed)
        torch.manual_seed(s.seed)
        if len(anchors) > s.max_anchors:
            anchors = anchors[rng.choice(len(anchors), s.max_anchors, replace=False)]
        neighbours = _top_neighbours(anchors, documents, min(s.neighbours, len(documents)))
        start = PCAAdapter().fit(documents).components_
        self._parameters(start)
        optimiser = torch.optim.Adam(self._trainable(), lr=s.lr)
        docs_t = torch.from_numpy(documents)
        anchors_t = torch.from_numpy(anchors)
        neighbours_t = torch.from_numpy(neighbours)
        if pairs is not None:
            pair_queries = torch.from_numpy(_check_vectors(pairs[0], "pair queries"))
            pair_docs = torch.as_tensor(np.asarray(pairs[1], dtype=np.int64))
        self.loss_history_ = []
        for step in range(s.steps):
            pick = torch.from_numpy(rng.choice(len(anchors), min(s.batch_size, len(anchors)), replace=False))
            others = torch.from_numpy(rng.integers(0, len(documents), size=(len(pick), s.sampled)))
            candidates = torch.cat([neighbours_t[pick], others], dim=1)
            loss = self._listwise_loss(anchors_t[pick], docs_t, candidates, dims)
            if pairs is not None and s.supervised_weight > 0:
                chosen = torch.from_numpy(rng.choice(len(pair_docs), min(s.batch_size, len(pair_docs)), replace=False))
                loss = loss + s.supervised_weight * self._ranking_loss(
                    pair_queries[chosen], docs_t, pair_docs[chosen], dims
                )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            self.loss_history_.append(float(loss.detach()))
            if s.progress:
                s.progress(step + 1, self.loss_history_[-1])
        self._export()
        return self

    def _trainable(self):
        raise NotImplementedError

    def _listwise_loss(self, anchors, documents, candidates, dims):
        """KL from the full vectors' softmax ranking of each anchor's candidates to each prefix's."""
        import torch

        cand = documents[candidates]  # (b, m, d) original vectors
        full = torch.einsum("bd,bmd->bm", anchors, cand)
        target = torch.softmax(full / self.settings.temperature, dim=1)
        mapped_anchor = self._apply(anchors)
        mapped_cand = self._apply(cand)
        loss = 0.0
        for dim in dims:
            a = torch.nn.functional.normalize(mapped_anchor[:, :dim], dim=-1)
            c = torch.nn.functional.normalize(mapped_cand[..., :dim], dim=-1)
            logits = torch.einsum("bd,bmd->bm", a, c) / self.settings.temperature
            loss = loss + torch.nn.functional.kl_div(torch.log_softmax(logits, dim=1), target, reduction="batchmean")
        return loss / len(dims)

    def _ranking_loss(self, queries, documents, positives, dims):
        """In-batch contrastive loss on each prefix: each query's relevant document against the others'."""
        import torch

        mapped_q = self._apply(queries)
        mapped_d = self._apply(documents[positives])
        labels = torch.arange(len(positives))
        same = positives[:, None] == positives[None, :]
        loss = 0.0
        for dim in dims:
            q = torch.nn.functional.normalize(mapped_q[:, :dim], dim=-1)
            d = torch.nn.functional.normalize(mapped_d[:, :dim], dim=-1)
            logits = (q @ d.T) / self.settings.temperature
            logits = logits.masked_fill(same & ~torch.eye(len(positives), dtype=torch.bool), -1e4)
            loss = loss + torch.nn.functional.cross_entropy(logits, labels)
        return loss / len(dims)

    def fit_transform(self, vectors: np.ndarray, **fit_args) -> np.ndarray:
        return self.fit(vectors, **fit_args).transform(vectors)

    def save(self, path: Path | str) -> Path:
        return save_adapter(self, path)


class OrthogonalAdapter(_RefinedAdapter):
    """``R = R_pca · exp(A − Aᵀ)``: always exactly orthogonal, so cosines at full dimension are
    unchanged and the adapted vectors can replace the originals."""

    kind = "orthogonal"

    def _parameters(self, start: np.ndarray) -> None:
        import torch

        self._start = torch.from_numpy(start.astype(np.float32))
        self._skew = torch.zeros_like(self._start, requires_grad=True)

    def _trainable(self):
        return [self._skew]

    def _rotation(self):
        import torch

        return self._start @ torch.linalg.matrix_exp(self._skew - self._skew.T)

    def _apply(self, x):
        return x @ self._rotation()

    def _export(self) -> None:
        import torch

        with torch.no_grad():
            rotation = self._rotation().double().numpy()
        # polish to orthogonal in float64 (the nearest orthogonal matrix) before storing as float32
        u, _, vt = np.linalg.svd(rotation)
        self.components_ = (u @ vt).astype(np.float32)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        if not hasattr(self, "components_"):
            raise NotFittedError("OrthogonalAdapter.transform() called before fit()")
        return np.asarray(vectors, dtype=np.float32) @ self.components_

    def _state(self) -> dict[str, np.ndarray]:
        return {"components_": self.components_}


class LearnedAdapter(_RefinedAdapter):
    """``f(x) = xW + MLP(xW)``: W starts at the PCA rotation and is free; the residual MLP
    (``hidden`` units, 0 for none) starts at zero, so training starts from PCA exactly."""

    kind = "learned"

    def __init__(self, settings: FitSettings | None = None, hidden: int = 0, **overrides) -> None:
        super().__init__(settings, **overrides)
        self.hidden = hidden

    def _parameters(self, start: np.ndarray) -> None:
        import torch

        d = start.shape[0]
        self._weight = torch.tensor(start.astype(np.float32), requires_grad=True)
        self._mlp = None
        if self.hidden:
            self._mlp = torch.nn.Sequential(
                torch.nn.Linear(d, self.hidden), torch.nn.GELU(), torch.nn.Linear(self.hidden, d)
            )
            torch.nn.init.zeros_(self._mlp[2].weight)
            torch.nn.init.zeros_(self._mlp[2].bias)

    def _trainable(self):
        return [self._weight] + (list(self._mlp.parameters()) if self._mlp is not None else [])

    def _apply(self, x):
        y = x @ self._weight
        return y + self._mlp(y) if self._mlp is not None else y

    def _export(self) -> None:
        import torch

        with torch.no_grad():
            self.weight_ = self._weight.detach().numpy().copy()
            if self._mlp is not None:
                self.w1_, self.b1_ = self._mlp[0].weight.T.numpy().copy(), self._mlp[0].bias.numpy().copy()
                self.w2_, self.b2_ = self._mlp[2].weight.T.numpy().copy(), self._mlp[2].bias.numpy().copy()

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        if not hasattr(self, "weight_"):
            raise NotFittedError("LearnedAdapter.transform() called before fit()")
        y = np.asarray(vectors, dtype=np.float32) @ self.weight_
        if self.hidden:
            hidden = y @ self.w1_ + self.b1_
            hidden = 0.5 * hidden * (1 + _erf(hidden / np.sqrt(2)))  # exact GELU, as torch's default
            y = y + hidden @ self.w2_ + self.b2_
        return y.astype(np.float32)

    def _state(self) -> dict[str, np.ndarray]:
        state = {"weight_": self.weight_, "hidden": np.asarray(self.hidden)}
        if self.hidden:
            state.update(w1_=self.w1_, b1_=self.b1_, w2_=self.w2_, b2_=self.b2_)
        return state


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x).astype(np.float32)


def _loss_dims(full_dim: int) -> list[int]:
    """d/32 (at least 8) doubling up to d/2: the prefixes the funnel's early stages use."""
    return [d for d in stage_dims(full_dim) if d < full_dim]


def _top_neighbours(anchors: np.ndarray, documents: np.ndarray, count: int, block: int = 1024) -> np.ndarray:
    """Row indices of each anchor's ``count`` nearest documents by the full vectors."""
    return np.concatenate([top_k(anchors[s : s + block] @ documents.T, count) for s in range(0, len(anchors), block)])


Adapter = PCAAdapter | OrthogonalAdapter | LearnedAdapter


def make_adapter(kind: str, settings: FitSettings | None = None, **options) -> Adapter:
    if kind == "pca":
        return PCAAdapter()
    if kind == "orthogonal":
        return OrthogonalAdapter(settings)
    if kind == "learned":
        return LearnedAdapter(settings, **options)
    raise AdapterError(f"unknown adapter kind {kind!r}; choose one of {', '.join(KINDS)}")


def save_adapter(adapter: Adapter, path: Path | str) -> Path:
    """One ``.npz`` with the kind and the learned arrays (a few hundred KB for 384 dims)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    heads = {f"{QUERY_HEAD_PREFIX}{dim}": weight for dim, weight in getattr(adapter, "query_heads_", {}).items()}
    np.savez(path, kind=np.asarray(adapter.kind), **adapter._state(), **heads)
    return path


def load_adapter(path: Path | str) -> Adapter:
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: no such adapter file (make one with 'matryoshka adapt')")
    try:
        with np.load(path, allow_pickle=False) as saved:
            state = {key: saved[key] for key in saved.files}
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path}: not an adapter file ({exc})") from None
    kind = str(state.pop("kind", ""))
    heads = {
        int(key[len(QUERY_HEAD_PREFIX) :]): state.pop(key) for key in list(state) if key.startswith(QUERY_HEAD_PREFIX)
    }
    if kind not in KINDS:
        raise AdapterError(f"{path}: unknown adapter kind {kind!r}")
    if kind == "learned":
        adapter = LearnedAdapter(hidden=int(state.pop("hidden", 0)))
    else:
        adapter = make_adapter(kind)
    for key, value in state.items():
        setattr(adapter, key, value)
    if heads:
        adapter.query_heads_ = heads
    return adapter


def adapted(adapter: Adapter, vectors: np.ndarray) -> np.ndarray:
    """``f(x)`` re-normalised: what the early funnel stages store and search."""
    return normalize(adapter.transform(vectors))


def adapted_queries(adapter: Adapter, queries: np.ndarray, head_dim: int | None = None) -> np.ndarray:
    """Queries as the funnel's head sees them: ``f(q)``, with its first ``head_dim`` coordinates
    from the query head ``G_head_dim`` when the adapter has one; re-normalised."""
    mapped = adapter.transform(queries)
    heads = getattr(adapter, "query_heads_", {})
    if head_dim in heads:
        mapped = mapped.copy()
        mapped[:, :head_dim] = np.asarray(queries, dtype=np.float32) @ heads[head_dim]
    return normalize(mapped)


QUERY_HEAD_PREFIX = "query_head_"


@dataclass
class QueryHeadSettings:
    """How query heads are trained."""

    shortlist: int = 200  # each query's full top-10 should rank inside this many head results
    top: int = 10
    steps: int = 120  # about 5 passes over 5,800 queries
    batch_size: int = 256
    lr: float = 1e-3
    temperature: float = 0.02  # of the soft rank (a sum of sigmoids)
    candidates: int = 2048  # head-ranked documents per query the soft rank counts (the rest are far behind)
    seed: int = 0


def fit_query_heads(
    adapter: Adapter,
    documents: np.ndarray,
    queries: np.ndarray,
    dims: Sequence[int],
    settings: QueryHeadSettings | None = None,
    *,
    anchors: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[int, np.ndarray]:
    """Fit a query-side head ``G_k`` for each of ``dims`` and attach those that help (``query_heads_``).

    ``queries``: real queries. A fifth of them (when there are 10 or more) is held out; a head is
    kept only if it puts more of those queries' full top documents into the head's shortlist
    than ``f(q)[:k]`` does (``query_head_validation_`` records both). ``anchors``: more query-like
    vectors (corpus sentences) to train on. The loss is a smooth count of the documents that
    outrank each of a query's full-vector top documents in the head (a *soft rank*), pushed below
    half the shortlist. Each ``G_k`` starts at the linear map closest to ``f(q)[:k]``. Real
    queries matter: on SciFact, corpus sentences alone did not move held-out head recall, while
    training queries plus those sentences did (docs/benchmarks.md, adapters)."""
    import torch

    s = settings or QueryHeadSettings()
    documents = _check_vectors(documents, "corpus vectors")
    queries = _check_vectors(queries, "query vectors")
    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)
    order = rng.permutation(len(queries))
    held = order[: len(queries) // 5] if len(queries) >= 10 else order[:0]
    train = queries[order[len(held) :]]
    if anchors is not None:
        train = np.concatenate([train, _check_vectors(anchors, "anchor vectors")])
    top = min(s.top, len(documents))
    positives = _top_neighbours(train, documents, top)
    held_truth = _top_neighbours(queries[held], documents, top) if len(held) else None
    mapped_docs = adapter.transform(documents)
    mapped_train = adapter.transform(train)
    mapped_held = adapter.transform(queries[held])
    heads: dict[int, np.ndarray] = {}
    report: dict[int, tuple[float, float]] = {}
    dims = sorted(set(int(d) for d in dims))
    for position, dim in enumerate(dims):
        docs_head = normalize(mapped_docs[:, :dim])
        start, *_ = np.linalg.lstsq(train.astype(np.float64), mapped_train[:, :dim].astype(np.float64), rcond=None)
        weight = _train_query_head(start.astype(np.float32), train, docs_head, positives, s, rng)
        if held_truth is None:
            heads[dim] = weight
        else:
            shortlist = min(s.shortlist, len(documents))
            before = _shortlist_recall(mapped_held[:, :dim], docs_head, held_truth, shortlist)
            after = _shortlist_recall(queries[held] @ weight, docs_head, held_truth, shortlist)
            report[dim] = (before, after)
            if after > before:
                heads[dim] = weight
        if progress:
            progress(position + 1, len(dims))
    adapter.query_heads_ = heads
    adapter.query_head_validation_ = report
    return heads


def _train_query_head(
    start: np.ndarray,
    queries: np.ndarray,
    docs_head: np.ndarray,
    positives: np.ndarray,
    s: QueryHeadSettings,
    rng: np.random.Generator,
) -> np.ndarray:
    import torch

    queries_t, docs_t, positives_t = torch.from_numpy(queries), torch.from_numpy(docs_head), torch.from_numpy(positives)
    weight = torch.tensor(start, requires_grad=True)
    optimiser = torch.optim.Adam([weight], lr=s.lr)
    margin = s.shortlist / 2
    order = np.zeros(0, dtype=np.int64)
    for _ in range(s.steps):
        if len(order) < min(s.batch_size, len(queries)):  # passes over the queries, each in a fresh order
            order = np.concatenate([order, rng.permutation(len(queries))])
        pick, order = torch.from_numpy(order[: s.batch_size]), order[s.batch_size :]
        q = torch.nn.functional.normalize(queries_t[pick] @ weight, dim=1)
        with torch.no_grad():
            near = torch.topk(q @ docs_t.T, min(s.candidates, len(docs_t)), dim=1).indices
        scores = torch.einsum("bk,bck->bc", q, docs_t[near])
        positive = torch.einsum("bk,btk->bt", q, docs_t[positives_t[pick]])
        soft_rank = torch.sigmoid((scores[:, None, :] - positive[:, :, None]) / s.temperature).sum(-1)
        loss = torch.nn.functional.softplus((soft_rank - margin) / 20).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return weight.detach().numpy().copy()


def _shortlist_recall(query_heads: np.ndarray, docs_head: np.ndarray, truth: np.ndarray, shortlist: int) -> float:
    """Fraction of each query's true top documents inside its head shortlist."""
    found = top_k(normalize(query_heads) @ docs_head.T, shortlist)
    return float(np.mean([np.isin(t, f).mean() for t, f in zip(truth, found)]))


def fit_on_texts(
    encoder,
    texts: Sequence[str],
    kind: str = "learned",
    *,
    pair_queries: Sequence[str] | None = None,
    pair_documents: Sequence[str] | None = None,
    settings: FitSettings | None = None,
    query_samples: int = 5_000,
    hidden: int = 0,
    query_heads: bool = True,
    queries: Sequence[str] | None = None,
    head_progress: Callable[[int, int], None] | None = None,
    encode_progress: Callable[[int], None] | None = None,
) -> Adapter:
    """Encode a corpus once and fit an adapter to it. Query-like anchors are sentences of the
    corpus encoded as queries (word windows where it has none); (query, relevant document)
    pairs, when given, add the supervised loss (a relevant document missing from the corpus is
    added to the fitting set). Real queries (the pairs' and ``queries``, which need no relevant
    documents) also fit, with ``query_heads``, a query head for each head dim the index may
    choose (:func:`fit_query_heads`, on those queries and the anchors)."""
    documents = encoder.encode(list(texts), kind="document", progress=encode_progress)
    supervised = pair_queries is not None and pair_documents is not None
    real_queries = list(dict.fromkeys([*(pair_queries or []), *(queries or [])])) if query_heads else []
    if kind == "pca" and not real_queries:
        return PCAAdapter().fit(documents)
    anchors = pseudo_queries(list(texts), encoder, count=query_samples, unit="sentence")
    pairs = None
    if supervised:
        row_of = {text: row for row, text in enumerate(texts)}
        missing = list(dict.fromkeys(t for t in pair_documents if t not in row_of))
        if missing:
            documents = np.concatenate([documents, encoder.encode(missing, kind="document")])
            row_of.update({text: len(texts) + i for i, text in enumerate(missing)})
        rows = np.asarray([row_of[t] for t in pair_documents], dtype=np.int64)
        pairs = (encoder.encode(list(pair_queries), kind="query"), rows)
    adapter = make_adapter(kind, settings, **({"hidden": hidden} if kind == "learned" else {}))
    adapter.fit(documents, queries=anchors, pairs=pairs)
    if real_queries:
        dims = [d for d in head_candidates(documents.shape[1]) if d < documents.shape[1]]
        fit_query_heads(
            adapter,
            documents,
            encoder.encode(real_queries, kind="query"),
            dims,
            anchors=anchors,
            progress=head_progress,
        )
    return adapter


@dataclass
class AdaptedEncoder:
    """A model followed by a post-hoc adapter: ``encode`` returns prefixes of ``f(x)``; ``base``
    still gives the model's original vectors (an index's last stage)."""

    base: Encoder
    adapter: Adapter
    adapter_path: str

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def full_dim(self) -> int:
        return self.base.full_dim

    def encode(
        self,
        texts: Sequence[str],
        dim: int | None = None,
        *,
        kind: TextKind | None = None,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        if dim is not None:
            check_dim(dim, self.full_dim)
        original = self.base.encode(texts, kind=kind, batch_size=batch_size, progress=progress)
        return truncate(self.adapter.transform(original), dim)


def with_adapter(encoder: Encoder, path: Path | str) -> AdaptedEncoder:
    """``encoder`` followed by the adapter saved at ``path`` (checked to fit the model's dimension)."""
    fitted = load_adapter(path)
    dim = fitted.components_.shape[0] if hasattr(fitted, "components_") else fitted.weight_.shape[0]
    if dim != encoder.full_dim:
        raise ModelError(f"adapter {path} maps {dim}-dim vectors but {encoder.name} makes {encoder.full_dim}-dim ones")
    return AdaptedEncoder(encoder, fitted, str(Path(path).resolve()))

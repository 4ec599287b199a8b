"""Fine-tune any sentence-transformers model into a Matryoshka model.

sentence-transformers' own ``MatryoshkaLoss`` wraps a base loss chosen by the data: contrastive
rows (anchor, positive[, negative]) get ``MultipleNegativesRankingLoss`` (its cached variant for
big batches), scored pairs get ``CoSENTLoss``. Training is sentence-transformers' Trainer; what
this module adds is reading the user's data with clear errors, a per-dimension evaluation that
encodes once per evaluation, checkpoints that survive Ctrl-C, and a saved model that records its
Matryoshka dims (``config_sentence_transformers.json`` and the model card).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
from transformers import TrainerCallback

from .data import Pairs, RetrievalData, is_beir_folder, is_sts_folder, read_beir, read_pairs, read_sts
from .errors import DataError, ModelError, TrainingError
from .evaluate import EvaluationReport, evaluate_retrieval, evaluate_sts
from .model_settings import DIMS_KEY
from .models import SentenceTransformerEncoder, load_model
from .vectors import halving_dims, normalize

LOSSES = ("auto", "mnrl", "cached-mnrl", "cosent")
ROTATIONS = ("none", "pca", "orthogonal")
ROTATION_TEMPERATURE = 0.02  # the listwise temperature of the rotation start, as benchmarks/train_sts.py measured it
CACHED_FROM_BATCH = 128  # from this batch size on, MNRL is replaced by its gradient-cached variant
MATRYOSHKA_CONFIG_KEY = DIMS_KEY  # config_sentence_transformers.json's key, which load_model reads back


@dataclass
class TrainSettings:
    dims: Sequence[int] | None = None  # default: d, d/2, … down to d/32 (at least 8)
    weights: Sequence[float] | None = None  # default: all 1
    epochs: float = 1.0
    batch_size: int = 16
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    loss: str = "auto"
    matryoshka: bool = True  # False trains the base loss alone (the benchmark's baseline)
    max_steps: int = -1
    eval_steps: int | None = None  # default: once per epoch
    save_steps: int = 500
    seed: int = 12
    rotation: str = (
        "orthogonal"  # start from an adapter's rotation fitted on the training texts, or "none" (add_rotation)
    )


@dataclass
class TrainResult:
    output: Path
    steps: int
    seconds: float
    loss: str
    dims: list[int]
    interrupted: bool = False
    evaluations: list[dict] = field(default_factory=list)
    final: EvaluationReport | None = None


@dataclass
class TrainingData:
    """Rows for sentence-transformers' Trainer, plus what kind they are."""

    columns: dict[str, list]
    kind: str  # "contrastive" or "scored"
    source: str

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))


def read_training_data(path: Path | str) -> TrainingData:
    """An STS Benchmark folder (train split, scores / 5), a BEIR folder (train qrels as
    (query, relevant document) rows), or a JSONL/CSV/TSV file of pairs or scored pairs."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    if is_sts_folder(path):
        pairs = read_sts(path, "train")
        return TrainingData(
            {"sentence1": pairs.first, "sentence2": pairs.second, "score": (pairs.scores / 5.0).tolist()},
            "scored",
            f"{path} (STS train)",
        )
    if is_beir_folder(path):
        data = read_beir(path, "train")
        text_of = dict(zip(data.corpus.ids, data.corpus.texts))
        anchors, positives = [], []
        for query_id, query_text in zip(data.query_ids, data.query_texts):
            for doc_id, grade in data.qrels.get(query_id, {}).items():
                if grade > 0:
                    anchors.append(query_text)
                    positives.append(text_of[doc_id])
        return TrainingData({"anchor": anchors, "positive": positives}, "contrastive", f"{path} (BEIR train qrels)")
    if path.is_dir():
        raise DataError(
            path,
            "a folder must be an STS Benchmark folder (sts-train.csv) or a BEIR folder (corpus, queries, qrels/train.tsv)",
        )
    pairs = read_pairs(path)
    if len(pairs) == 0:
        raise DataError(path, "no training rows")
    return _from_pairs(pairs, str(path), path)


def _from_pairs(pairs: Pairs, source: str, path: Path) -> TrainingData:
    if pairs.scores is not None:
        scores = np.asarray(pairs.scores, dtype=np.float64)
        if scores.min() < 0 or scores.max() > 1:
            if scores.min() >= 0 and scores.max() <= 5:
                scores = scores / 5.0  # the STS convention, 0..5
            else:
                raise DataError(
                    path, f"scores must lie in 0..1 (or 0..5, STS style); found {scores.min()}..{scores.max()}"
                )
        return TrainingData(
            {"sentence1": pairs.first, "sentence2": pairs.second, "score": scores.tolist()}, "scored", source
        )
    columns = {"anchor": pairs.first, "positive": pairs.second}
    if pairs.negative is not None:
        columns["negative"] = pairs.negative
    return TrainingData(columns, "contrastive", source)


def choose_loss(kind: str, requested: str, batch_size: int) -> str:
    if requested not in LOSSES:
        raise TrainingError(f"unknown loss {requested!r}; choose one of {', '.join(LOSSES)}")
    if requested == "auto":
        if kind == "scored":
            return "cosent"
        return "cached-mnrl" if batch_size >= CACHED_FROM_BATCH else "mnrl"
    if (requested == "cosent") != (kind == "scored"):
        needs = "scored pairs (a score column)" if requested == "cosent" else "(anchor, positive[, negative]) rows"
        raise TrainingError(f"loss {requested} needs {needs}; the data has {kind} rows")
    return requested


def build_loss(model, name: str, dims: Sequence[int] | None, weights: Sequence[float] | None, matryoshka: bool):
    from sentence_transformers import losses

    if name == "cosent":
        base = losses.CoSENTLoss(model)
    elif name == "cached-mnrl":
        base = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=32)
    else:
        base = losses.MultipleNegativesRankingLoss(model)
    if not matryoshka:
        return base
    return losses.MatryoshkaLoss(
        model, base, matryoshka_dims=list(dims), matryoshka_weights=list(weights) if weights else None
    )


def check_dims(
    dims: Sequence[int] | None, weights: Sequence[float] | None, full_dim: int
) -> tuple[list[int], list[float]]:
    dims = sorted(set(int(d) for d in dims), reverse=True) if dims else halving_dims(full_dim)
    bad = [d for d in dims if not 1 <= d <= full_dim]
    if bad:
        raise TrainingError(f"dims {bad} are outside 1..{full_dim} (the model's full dimension)")
    weights = list(weights) if weights else [1.0] * len(dims)
    if len(weights) != len(dims):
        raise TrainingError(f"{len(weights)} weights for {len(dims)} dims; give one weight per dim")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise TrainingError("weights must be non-negative and not all zero")
    return dims, weights


class PerDimensionEvaluator(SentenceEvaluator):
    """Quality at every Matryoshka dim from one encode of the evaluation data (STS Spearman or
    retrieval nDCG@10); plugs into the Trainer as a sentence-transformers evaluator."""

    def __init__(self, data: Pairs | RetrievalData, dims: Sequence[int], name: str = "matryoshka") -> None:
        super().__init__()
        self.data, self.dims, self.name = data, list(dims), name
        self.task = "sts" if isinstance(data, Pairs) else "retrieval"
        self.metric = "spearman" if self.task == "sts" else "ndcg@10"
        self.history: list[dict] = []
        self.last_report: EvaluationReport | None = None
        self.primary_metric = f"{self.metric}_{max(self.dims)}".replace("@", "_at_")
        self.greater_is_better = True

    def evaluate(self, model, model_name: str = "model") -> EvaluationReport:
        encoder = SentenceTransformerEncoder(model, model_name)
        if self.task == "sts":
            return evaluate_sts(encoder, self.data, self.dims, ["truncate"], data_name=self.name)
        return evaluate_retrieval(encoder, self.data, self.dims, ["truncate"], data_name=self.name)

    def __call__(self, model, output_path: str | None = None, epoch: float = -1, steps: int = -1) -> dict[str, float]:
        was_training = model.training
        report = self.evaluate(model)
        model.train(was_training)
        self.last_report = report
        scores = {
            f"{self.metric}_{dim}".replace("@", "_at_"): report.score("truncate", dim, self.metric)
            for dim in report.dims()
        }
        self.history.append({"epoch": epoch, "steps": steps, **scores})
        return self.prefix_name_to_metrics(scores, self.name) if self.name else scores


def read_eval_data(path: Path | str) -> Pairs | RetrievalData:
    """STS folder (validation split, else test), BEIR folder (test split), or a file of scored pairs."""
    path = Path(path)
    if is_sts_folder(path):
        for split in ("dev", "validation", "test"):
            try:
                return read_sts(path, split)
            except DataError:
                continue
        raise DataError(path, "no dev, validation or test split found")
    if is_beir_folder(path):
        return read_beir(path, "test")
    pairs = read_pairs(path)
    if pairs.scores is None:
        raise DataError(path, "evaluation pairs need a score column (or give an STS or BEIR folder)")
    return pairs


def train(
    model_name: str,
    data: TrainingData,
    output: Path | str,
    settings: TrainSettings = TrainSettings(),
    *,
    eval_data: Pairs | RetrievalData | None = None,
    show_progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
    trust_remote_code: bool = False,
) -> TrainResult:
    """Train and save to ``output``. Ctrl-C stops training and saves the weights reached so far
    (marked as interrupted), and the checkpoints under ``output/checkpoints`` stay loadable.
    ``trust_remote_code``: run the code the model ships (see :func:`matryoshka.models.load_model`)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    output = Path(output)
    if settings.rotation not in ROTATIONS:
        raise TrainingError(f"unknown rotation {settings.rotation!r}; choose one of {', '.join(ROTATIONS)}")
    encoder = load_model(model_name, trust_remote_code=trust_remote_code)
    if not isinstance(encoder, SentenceTransformerEncoder):
        raise ModelError(f"{model_name!r} is not a sentence-transformers model; only those can be fine-tuned")
    dims, weights = check_dims(settings.dims, settings.weights, encoder.full_dim)
    if settings.rotation != "none":
        add_rotation(encoder, data, settings.rotation, seed=settings.seed, show_progress=show_progress)
    model = encoder.model
    loss_name = choose_loss(data.kind, settings.loss, settings.batch_size)
    loss = build_loss(model, loss_name, dims, weights, settings.matryoshka)
    evaluator = PerDimensionEvaluator(eval_data, dims) if eval_data is not None else None
    steps_per_epoch = max(1, math.ceil(len(data) / settings.batch_size))
    total_steps = settings.max_steps if settings.max_steps > 0 else math.ceil(steps_per_epoch * settings.epochs)
    eval_steps = settings.eval_steps or steps_per_epoch
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output / "checkpoints"),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.lr,
        warmup_steps=int(settings.warmup_ratio * total_steps),
        seed=settings.seed,
        data_seed=settings.seed,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if evaluator is not None else "no",
        eval_steps=eval_steps if evaluator is not None else None,
        logging_steps=max(1, min(50, total_steps // 10)),
        report_to="none",
        disable_tqdm=not show_progress,
        use_cpu=not _has_gpu(),
        batch_sampler="no_duplicates" if data.kind == "contrastive" else "batch_sampler",
        dataloader_drop_last=False,
    )

    class Forward(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if on_log and logs:
                on_log({"step": state.global_step, **logs})

    stop = StopOnInterrupt()
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(data.columns),
        loss=loss,
        evaluator=evaluator,
        callbacks=[Forward(), stop],
    )
    started = time.perf_counter()
    interrupted = False
    try:
        with stop.catching_ctrl_c():
            trainer.train()
    except KeyboardInterrupt:
        interrupted = True
    interrupted = interrupted or stop.requested
    seconds = time.perf_counter() - started
    result = TrainResult(
        output, trainer.state.global_step, seconds, loss_name, dims, interrupted, evaluator.history if evaluator else []
    )
    if evaluator is not None and not interrupted:
        result.final = evaluator.evaluate(model, model_name=str(output))
    save_model(model, output, result, settings, data)
    return result


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C asks the trainer to stop at the end of the current step, so that no checkpoint or
    file is half-written and no lock is left held; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def catching_ctrl_c(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return

        def handler(signum, frame) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_training_stop = True
        return control


def training_texts(data: TrainingData, limit: int = 20_000) -> list[str]:
    """The distinct texts of the training rows (every text column), at most ``limit``."""
    texts = [text for name, column in data.columns.items() if name != "score" for text in column]
    return list(dict.fromkeys(texts))[:limit]


def add_rotation(
    encoder: SentenceTransformerEncoder, data: TrainingData, kind: str, seed: int = 12, show_progress: bool = False
) -> None:
    """Put a trainable orthogonal rotation, fitted by ``matryoshka.adapt`` on the training texts,
    in front of the model's output (before its Normalize, if any).

    A rotation changes no full-dimension cosine, so the model starts exactly where it was; but its
    prefixes start as the adapter's, which already carry more than plain truncation does, so
    MatryoshkaLoss starts the short dims from there instead of from scratch. The layer is a plain
    sentence-transformers ``Dense``, so the saved model still loads with ``SentenceTransformer``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize
    from tqdm.auto import tqdm

    from .adapt import FitSettings, make_adapter

    vectors = normalize(encoder.encode(training_texts(data), kind="document"))
    settings = FitSettings(seed=seed, temperature=ROTATION_TEMPERATURE)
    with tqdm(
        total=settings.steps, desc=f"fitting the {kind} start", disable=not show_progress or kind == "pca"
    ) as bar:
        settings.progress = lambda step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.4f}"))
        adapter = make_adapter(kind, settings).fit(vectors)
    rotation = torch.from_numpy(adapter.components_.T.copy())  # Linear computes x Wᵀ, the adapter x R
    modules = list(encoder.model)
    at = next((i for i, module in enumerate(modules) if isinstance(module, Normalize)), len(modules))
    dense = Dense(
        encoder.full_dim, encoder.full_dim, bias=False, activation_function=torch.nn.Identity(), init_weight=rotation
    )
    modules.insert(at, dense)
    model = SentenceTransformer(modules=modules, device=str(encoder.model.device))
    model.prompts, model.default_prompt_name = encoder.model.prompts, encoder.model.default_prompt_name
    encoder.model = model


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def save_model(model, output: Path, result: TrainResult, settings: TrainSettings, data: TrainingData) -> None:
    """Save in sentence-transformers' format, then record the Matryoshka dims in its config and
    the per-dimension table in its model card."""
    output.mkdir(parents=True, exist_ok=True)
    model.save(str(output))
    config_path = output / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config[MATRYOSHKA_CONFIG_KEY] = list(result.dims) if settings.matryoshka else None
    config["matryoshka_training"] = {
        "loss": result.loss,
        "matryoshka": settings.matryoshka,
        "weights": list(settings.weights or [1.0] * len(result.dims)),
        "steps": result.steps,
        "interrupted": result.interrupted,
        "data": data.source,
        "rows": len(data),
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("dims", "weights")},
    }
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    card = output / "README.md"
    card.write_text((card.read_text() if card.exists() else "") + model_card_section(result, settings))


def model_card_section(result: TrainResult, settings: TrainSettings) -> str:
    lines = ["", "## Matryoshka dimensions", ""]
    if settings.matryoshka:
        lines.append(
            f"Trained with `MatryoshkaLoss` around `{result.loss}` at dims {', '.join(map(str, result.dims))}: "
            "truncate embeddings to any of them (and re-normalise) for smaller, faster vectors."
        )
    else:
        lines.append(f"Trained with `{result.loss}` alone (no MatryoshkaLoss).")
    if result.interrupted:
        lines.append(f"Training was interrupted after {result.steps} steps; these are the weights reached then.")
    if result.final is not None:
        report = result.final
        lines += ["", f"| dim | {report.metric} | % of full |", "|---:|---:|---:|"]
        for dim in report.dims():
            lines.append(
                f"| {dim} | {report.score('truncate', dim, report.metric):.4f} | {100 * report.relative('truncate', dim):.1f}% |"
            )
    return "\n".join(lines) + "\n"


def matryoshka_dims(model_folder: Path | str) -> list[int] | None:
    """The dims a model folder was trained at, if it was trained here."""
    config_path = Path(model_folder) / "config_sentence_transformers.json"
    if not config_path.exists():
        return None
    return json.loads(config_path.read_text()).get(MATRYOSHKA_CONFIG_KEY)

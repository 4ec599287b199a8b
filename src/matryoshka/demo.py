"""The bundled demo corpus: a slice of SQuAD v1.1 dev (CC BY-SA 4.0) in BEIR layout."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "sample" / "squad"
SAMPLE_SPLIT = "dev"

"""matryoshka: Matryoshka embeddings end to end."""

from .models import load_model, normalize, truncate

__all__ = ["load_model", "normalize", "truncate"]
__version__ = "0.1.0"

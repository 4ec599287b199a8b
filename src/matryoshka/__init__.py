"""matryoshka: Matryoshka embeddings end to end."""

from .errors import MatryoshkaError
from .models import load_model
from .vectors import normalize, truncate

__all__ = ["MatryoshkaError", "load_model", "normalize", "truncate"]
__version__ = "0.1.0"

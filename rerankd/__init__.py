"""rerankd: a rerank server with Cohere- and Jina-compatible APIs."""

__all__ = ["__version__"]

__version__ = "0.1.0"

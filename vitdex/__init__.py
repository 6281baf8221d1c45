"""vitdex: ViT embeddings of photo folders in a vector store, with a SQL catalog."""

__version__ = "0.1.0"

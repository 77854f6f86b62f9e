"""eclip: catalog-aware vision-language representation learning for e-commerce."""

__version__ = "0.1.0"

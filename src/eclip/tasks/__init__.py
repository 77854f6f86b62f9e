"""Downstream evaluation: embedding a catalog, retrieval, zero-shot classification, the report."""

"""Downstream evaluation: embed a catalog once, then the five e-commerce tasks (category, attribute,
matching, clustering, adult) with image / text / both against baselines, and the report."""

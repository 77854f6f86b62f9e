"""Catalog data: schema, readers, text cleaning and composition, safe images, the demo catalog."""

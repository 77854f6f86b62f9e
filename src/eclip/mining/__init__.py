"""Catalogs mined from a model's vectors: groups of listings that are the same product, for
catalogs that have no catalog ids, or ids for only some listings (``data.catalog_source``)."""

from eclip.mining.files import mine_catalog_file
from eclip.mining.mine import MINED_PREFIX, MiningResult, hide_catalog_ids, mine_catalogs, summary

__all__ = ["MINED_PREFIX", "MiningResult", "hide_catalog_ids", "mine_catalog_file",
           "mine_catalogs", "summary"]

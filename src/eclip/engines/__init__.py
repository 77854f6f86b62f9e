"""Where the batch jobs run: ``local`` (this process) or ``ray`` (Ray Data on a local Ray or a
cluster).

``eclip embed`` and ``eclip prepare`` take ``--engine local|ray``. Both engines run the same code
per listing: :func:`eclip.encode.listings.embed_listings` for a block of listings (embed), and the
shard module's image encoding for each listing (prepare); the Ray engine only distributes the
blocks over a pool of actors and gathers what they return. The catalog is read (and, for embed,
its images checked) by :func:`eclip.catalog.load.load_catalog` in the driver, so
``bad_rows.json`` is the local path's report.

- :mod:`eclip.engines.ray_session`: Ray itself (imported lazily; a one-line error naming
  ``pip install 'eclip[ray]'`` where it is missing), started locally on this machine's cores or
  joined by address (``--ray-address``).
- :mod:`eclip.engines.embed`: ``embed_with_ray``, Parquet parts and ``manifest.json``.
- :mod:`eclip.engines.prepare`: ``prepare_with_ray``, the tar shards and ``index.json`` of
  ``eclip prepare``, byte for byte.
"""

ENGINES = ("local", "ray")
DEFAULT_ENGINE = "local"

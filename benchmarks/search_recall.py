"""R@10 of text and photo search through the HTTP API, on a catalog's held-out (test) listings.

    eclip demo --out demo_out
    eclip index --model demo_out/models/eclip --catalog demo_out/catalog/listings.jsonl \\
        --out demo_index
    python benchmarks/search_recall.py --index demo_index \\
        --catalog demo_out/catalog/listings.jsonl

The service runs on 127.0.0.1 (a free port) in this process; every query is a real HTTP request.
The index is expected to hold the whole catalog; queries are the listings of ``--split``. Prints a
Markdown table (hit rules in ``eclip.search.evaluate``).

With ``--classify`` it scores ``POST /classify`` on those listings instead; that needs an index
built without them (e.g. from the catalog's other splits), or each listing would vote for itself.
"""

from __future__ import annotations

import argparse
import platform
import time

import httpx

from eclip.catalog.readers import read_catalog
from eclip.search.api import create_app
from eclip.search.evaluate import (
    CLASSIFY_HEAD,
    TABLE_HEAD,
    classify_through_api,
    recall_through_api,
)
from eclip.search.server import background_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="index folder (eclip index --out)")
    parser.add_argument("--catalog", required=True, help="the catalog the index was built from")
    parser.add_argument("--split", default="test",
                        help="which listings are queries (default: test)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--all-against", action="store_true",
                        help="also search titles and photos against every vector kind")
    parser.add_argument("--classify", action="store_true",
                        help="score /classify instead (the index must not hold the queries)")
    args = parser.parse_args()

    listings = read_catalog(args.catalog, check_images=False).listings
    queries = [x for x in listings if x.split == args.split]
    if not queries:
        raise SystemExit(f"no listings with split '{args.split}' in {args.catalog}")
    modes = (("text", "text"), ("image", "image"))
    if args.all_against:
        modes = tuple((m, a) for m in ("text", "image") for a in ("text", "image", "both"))
    start = time.time()
    with background_server(create_app(args.index)) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        health = client.get("/health").json()
        if args.classify:
            if client.get(f"/similar/{queries[0].product_id}").status_code != 404:
                raise SystemExit("--classify needs an index without the query listings")
            report = classify_through_api(client, queries)
        else:
            report = recall_through_api(client, queries, listings, k=args.k, modes=modes)
    print(f"index {args.index} ({health['generation']}, {health['listings']} listings); "
          f"catalog {args.catalog}: {len(queries)} "
          f"'{args.split}' queries; {platform.node()}, {time.strftime('%Y-%m-%d')}, "
          f"{time.time() - start:.0f} s\n")
    print(CLASSIFY_HEAD if args.classify else TABLE_HEAD.format(k=args.k))
    for row in report:
        print(row.row())


if __name__ == "__main__":
    main()

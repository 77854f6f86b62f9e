"""The search service: a FastAPI app over an index folder, and the web page that uses it.

``create_app(index_dir)`` serves:

* ``POST /search/text``   JSON ``{query, k, category?, catalog_id?, adult?, against?, mode?}``:
                          ``mode`` "vector", "lexical" (words of titles, brands, categories) or
                          "hybrid" (the two fused by reciprocal rank, the default; ``hybrid.py``)
* ``POST /search/image``  multipart: ``file`` (a photo), ``k``, ``category``, ``catalog_id``,
                          ``adult``, ``against``
* ``GET  /similar/{product_id}?k=&adult=``   the same product from other sellers first, then
                          look-alikes

The filters apply in every mode: ``category`` (and those below it), ``catalog_id`` (one product's
listings) and ``adult`` (false: hide listings flagged adult, keeping those whose flag is unknown;
true: only flagged ones; absent: no filter).
* ``POST /classify``      multipart: ``title`` and/or ``file`` (``exclude``: a product id left out
                          of the neighbour vote) -> top categories, adult probability
* ``GET  /categories``, ``GET /health``, ``GET /images/{product_id}?n=`` (stored thumbnails)
* ``GET  /`` the web page (``static/``), ``GET /openapi.json`` the schema, ``/docs`` the schema as
  Swagger UI 5, whose script and style come from a package (``fastapi-offline``'s static files,
  served under ``/docs-assets/``), so that the page works without internet

Requests are bounded before they are read: bodies above the endpoint's limit get 413 (whether or
not they announce their length), uploads that are not usable photos 415/422 with the reason, bad
fields 422 naming the field. Files are only ever served from the index (thumbnails resolved from a
listing id) or from the package's own static folder. A newer generation written by ``eclip index``
is picked up while serving (checked at most once a second).
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import faiss
import torch
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from eclip import __version__
from eclip.catalog.images import load_image
from eclip.catalog.text import basic_normalize
from eclip.errors import ImageError
import eclip.search.hybrid as hybrid
from eclip.search.metadata import StoredListing
from eclip.search.reader import Hit, LiveIndex, SearchIndex

STATIC_DIR = Path(__file__).with_name("static")
# Swagger UI 5's files as fastapi-offline ships them (swagger-ui-bundle 1.1 holds Swagger UI 4,
# which cannot read the OpenAPI 3.1 schema FastAPI writes). Only the folder is used, not its code.
DOCS_ASSETS = Path(importlib.util.find_spec("fastapi_offline").origin).with_name("static")
DOCS_FILES = {"js": "swagger-ui-bundle.js", "css": "swagger-ui.css", "icon": "favicon.png"}
MAX_K = 100
MAX_TEXT = 500
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
MAX_BODY_BYTES = 64 * 1024  # any request that carries no photo
UPLOAD_PATHS = ("/search/image", "/classify")
JSON_PATHS = ("/search/text",)  # endpoints whose body is a JSON object
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
               "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

CATALOG_HELP = "only listings of this catalog id (the same product from several sellers)"
ADULT_HELP = ("false: hide listings flagged adult (safe search; listings whose adult flag is "
              "unknown are kept); true: only listings flagged adult; absent or null: no filter")

Against = Literal["text", "image", "both"]
Mode = Literal["vector", "lexical", "hybrid"]


# ------------------------------------------------------------------------------- schemas
class TextSearch(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    query: str = Field(min_length=1, max_length=MAX_TEXT, description="what the buyer typed")
    k: int = Field(10, ge=1, le=MAX_K, description="number of results")
    category: str | None = Field(None, min_length=1, max_length=MAX_TEXT,
                                 description="only this category and those below it, e.g. "
                                             "'Food & Drink' or 'Food & Drink > Drink'")
    catalog_id: str | None = Field(None, min_length=1, max_length=MAX_TEXT,
                                   description=CATALOG_HELP)
    adult: bool | None = Field(None, description=ADULT_HELP)
    against: Against = Field("text", description="search listings' titles (text), photos (image) "
                                                 "or both (fused vectors)")
    mode: Mode = Field(hybrid.DEFAULT_MODE,
                       description="vector: the query's embedding (see against); lexical: its "
                                   "words in titles, brands and categories (bm25); hybrid: the "
                                   "two lists fused by reciprocal rank")


class ListingOut(BaseModel):
    product_id: str
    title: str = Field(description="the title as shown: HTML entities decoded, full-width letters "
                                   "and invisible characters normalised (no word removed)")
    raw_title: str = Field(description="the title as the catalog gives it")
    brand: str | None
    category: str | None
    catalog_id: str | None
    adult: bool | None
    images: int
    image_url: str | None


class Result(ListingOut):
    score: float = Field(description="cosine similarity to the query (vector mode), -bm25 "
                                     "(lexical) or the reciprocal-rank-fusion score (hybrid)")
    same_catalog: bool = Field(False, description="a listing of the same catalog (same product)")


class SearchResponse(BaseModel):
    results: list[Result]
    against: Against
    mode: Mode = Field(description="how the results were found (photos: always vector)")
    took_ms: float
    generation: str


class SimilarResponse(BaseModel):
    product: ListingOut
    results: list[Result]
    took_ms: float
    generation: str


class CategoryScore(BaseModel):
    category: str
    score: float


class ClassifyResponse(BaseModel):
    categories: list[CategoryScore] = Field(description="neighbour vote, shares summing to <= 1")
    adult_probability: float | None = Field(description="null when the index had no adult labels")
    input: Against = Field(description="what the prediction was made from")
    took_ms: float


class CategoryCount(BaseModel):
    category: str
    count: int


class Health(BaseModel):
    status: Literal["ok"]
    listings: int
    generation: str
    vectors: dict[str, str]
    model_sha1: str
    query_encoder: Literal["onnx", "pytorch"]
    version: str


# ----------------------------------------------------------------------------- body limits
class _TooLarge(Exception):
    pass


class RequestGuard:
    """ASGI middleware: body size limits (413) and security headers on every response.

    A body announced too large is refused before it is read; one that grows past the limit while
    being read (chunked uploads) is cut off, and whatever the app answered is replaced by 413.
    """

    def __init__(self, app, *, upload_limit: int, body_limit: int = MAX_BODY_BYTES):
        self.app = app
        self.upload_limit = upload_limit
        self.body_limit = body_limit

    def limit_for(self, path: str) -> int:
        return self.upload_limit if path in UPLOAD_PATHS else self.body_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _reply(send, 400, "invalid Content-Length header")
            return
        if declared is not None and int(declared) > limit:
            await _reply(send, 413, _too_large(limit))
            return
        state = {"received": 0, "exceeded": False, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["exceeded"] = True
                    raise _TooLarge()
            return message

        async def guarded_send(message):
            if state["exceeded"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        app_receive = limited_receive
        if scope.get("method") == "POST" and scope["path"] in JSON_PATHS:
            body = b""
            try:
                while True:
                    message = await limited_receive()
                    if message["type"] != "http.request":
                        break
                    body += message.get("body", b"")
                    if not message.get("more_body", False):
                        break
            except _TooLarge:
                await _reply(send, 413, _too_large(limit))
                return
            problem, scope = _json_body(scope, body)
            if problem is not None:
                await _reply(send, 422, f"invalid request: body: {problem}",
                             errors=[{"field": "body", "message": problem}])
                return
            app_receive = _replay(body, receive)
        try:
            await self.app(scope, app_receive, guarded_send)
        except Exception:
            if not state["exceeded"]:
                raise
        if state["exceeded"] and not state["started"]:
            await _reply(send, 413, _too_large(limit))


def _json_body(scope, body: bytes):
    """A JSON endpoint's body looked at before FastAPI parses it: nesting beyond what Python's
    parser can take is a 422 like any malformed JSON (FastAPI would answer 400), and a body sent
    without a Content-Type is taken as the JSON it is. Returns (problem or None, scope)."""
    try:
        json.loads(body)
    except RecursionError:
        return ("malformed JSON: nested too deeply (send a JSON object such as "
                '{"query": "blue pen", "k": 10})'), scope
    except ValueError:
        return None, scope  # FastAPI's own message names the position
    headers = list(scope["headers"])
    if not dict(headers).get(b"content-type"):
        headers = [(k, v) for k, v in headers if k != b"content-type"]
        headers.append((b"content-type", b"application/json"))
        scope = {**scope, "headers": headers}
    return None, scope


def _replay(body: bytes, receive):
    """An ASGI ``receive`` that hands over the body read already, then the client's messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _too_large(limit: int) -> str:
    return f"request body too large: at most {limit} bytes are accepted here"


async def _reply(send, status: int, detail: str, **extra) -> None:
    body = json.dumps({"detail": detail, **extra}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------- helpers
def _listing_out(item: StoredListing) -> dict:
    url = f"/images/{quote(item.product_id, safe='')}?n=0" if item.images else None
    return {"product_id": item.product_id, "title": basic_normalize(item.title) or item.title,
            "raw_title": item.title, "brand": item.brand,
            "category": item.category, "catalog_id": item.catalog_id, "adult": item.adult,
            "images": len(item.images), "image_url": url}


def _results(hits: list[Hit]) -> list[dict]:
    return [{**_listing_out(h.listing), "score": round(h.score, 6), "same_catalog": h.same_catalog}
            for h in hits]


def _read_photo(upload: UploadFile, limit: int, max_pixels: int):
    """The uploaded file decoded by ``load_image`` (safe with any bytes), or a 4xx saying why."""
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"photo too large: at most {limit} bytes are accepted")
    if not data:
        raise HTTPException(422, "the uploaded photo is empty")
    with tempfile.NamedTemporaryFile(prefix="eclip-upload-") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            return load_image(tmp.name, max_pixels=max_pixels)
        except ImageError as exc:
            reason = str(exc).split(f"{tmp.name}: ", 1)[-1]
            status = 415 if reason.startswith("not an image") else 422
            raise HTTPException(status, f"the upload is not a usable photo: {reason}") from None


def _field_errors(exc: RequestValidationError, content_type: str | None = None) -> list[dict]:
    errors = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "JSON decode error")
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            errors.append({"field": "body", "message": f"malformed JSON: {reason}{at}"})
            continue
        field = ".".join(loc[1:]) if len(loc) > 1 else ".".join(loc)
        message = error.get("msg", "invalid")
        if loc == ["body"] and "dictionary" in message:
            if content_type and "json" not in content_type.lower():
                message = (f"the body was sent as {content_type.split(';')[0].strip()}, not as "
                           f"JSON: send a JSON object with Content-Type: application/json")
            else:
                message += ' (send a JSON object, e.g. {"query": "blue pen", "k": 10})'
        errors.append({"field": field, "message": message})
    return errors


# ----------------------------------------------------------------------------------- app
def create_app(index_dir: str | Path, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_upload_pixels: int = MAX_UPLOAD_PIXELS, check_every: float = 1.0,
               warm: bool = True, threads_per_request: int | None = None,
               onnx: bool = False) -> FastAPI:
    """The service over ``index_dir`` (opened now, so a bad folder fails here, not per request).

    ``threads_per_request`` sets the thread pools of torch and FAISS for the whole process (None
    leaves them alone; ``eclip serve`` uses 1). Requests are served in parallel, and one query
    spread over several threads is much slower than on one when the cores are busy: on a loaded
    2-core machine a title encodes in 4 ms of CPU on one torch thread and 54-71 ms on two, and a
    20k-vector exact scan takes 1.5 ms on one FAISS thread and 24 ms on two.

    ``onnx`` exports the index's model to ONNX first unless the index holds it already; queries are
    encoded by ONNX Runtime whenever it does (``/health`` says which encoder runs).

    An uploaded photo is decoded under the smaller of ``max_upload_pixels`` and the index's own
    ``max_pixels`` (``data.max_pixels`` when it was built): a larger one is decoded at reduced
    size, and one too large even so is answered 422 with the reason.
    """
    if threads_per_request is not None:
        torch.set_num_threads(threads_per_request)
        faiss.omp_set_num_threads(threads_per_request)
    if onnx:
        from eclip.search.onnx_query import write_index_onnx

        write_index_onnx(index_dir)
    live = LiveIndex(index_dir, check_every=check_every)
    if warm:
        live.get().model  # noqa: B018 - load the model before the first query
        getattr(live.get()._encoder, "towers", None)  # and the ONNX Runtime sessions
    app = FastAPI(title="eclip product search", version=__version__,
                  description="Search a catalog by text or photo, find the same product, "
                              "classify a listing.", docs_url=None, redoc_url=None)
    app.state.query_encoder = live.get().query_encoder
    app.add_middleware(RequestGuard, upload_limit=max_upload_bytes + MAX_BODY_BYTES)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc, request.headers.get("content-type"))
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse({"detail": f"invalid request: {detail}", "errors": errors},
                            status_code=422)

    def photo(upload: UploadFile):
        """An upload decoded under the limits (the index in service's own max_pixels)."""
        return _read_photo(upload, max_upload_bytes,
                           min(max_upload_pixels, live.get().info.max_pixels))

    _page_routes(app)
    _service_routes(app, live.get)
    _search_routes(app, live.get, photo)
    _classify_routes(app, live.get, photo)
    return app


def _page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"content-security-policy": PAGE_POLICY})

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url=f"/docs-assets/{DOCS_FILES['js']}",
                                   swagger_css_url=f"/docs-assets/{DOCS_FILES['css']}",
                                   swagger_favicon_url=f"/docs-assets/{DOCS_FILES['icon']}",
                                   oauth2_redirect_url="/docs/oauth2-redirect")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def docs_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def _service_routes(app: FastAPI, index) -> None:
    """``/health``, ``/categories``, ``/images``; ``index()``: the generation in service."""
    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> dict:
        current = index()
        return {"status": "ok", "listings": len(current), "generation": current.generation,
                "vectors": {m: s.describe() for m, s in current.info.vectors.items()},
                "model_sha1": current.info.model_sha1, "query_encoder": current.query_encoder,
                "version": __version__}

    @app.get("/categories", response_model=list[CategoryCount], tags=["service"])
    def categories() -> list[dict]:
        return [{"category": c, "count": n} for c, n in index().categories()]

    @app.get("/images/{product_id:path}", tags=["service"],
             responses={200: {"content": {"image/jpeg": {}}}, 404: {}})
    def image(product_id: str, n: int = Query(0, ge=0, le=1000)) -> FileResponse:
        """The stored thumbnail of a listing's n-th photo."""
        path = index().image_file(product_id, n)
        if path is None:
            raise HTTPException(404, f"no photo {n} for product_id {product_id!r}")
        return FileResponse(path, media_type="image/jpeg",
                            headers={"cache-control": "public, max-age=3600"})


def _search_routes(app: FastAPI, index, photo) -> None:
    """``/search/text``, ``/search/image``, ``/similar``; ``photo(upload)``: a decoded upload."""
    @app.post("/search/text", response_model=SearchResponse, tags=["search"])
    def search_text(body: TextSearch) -> dict:
        """Listings for a query text, best first, found by its vector, its words or both."""
        start = time.perf_counter()
        current = index()
        mode = body.mode
        if "mode" not in body.model_fields_set and current.store.lexical_tokenizer is None:
            mode = "vector"  # an index written before lexical search: its default is vector
        try:
            hits = hybrid.search_text(current, body.query, body.k, mode=mode,
                                      against=body.against, category=body.category,
                                      catalog_id=body.catalog_id, adult=body.adult)
        except hybrid.NoLexicalIndex as exc:
            raise HTTPException(409, str(exc)) from None
        return {"results": _results(hits), "against": body.against, "mode": mode,
                "took_ms": (time.perf_counter() - start) * 1000, "generation": current.generation}

    @app.post("/search/image", response_model=SearchResponse, tags=["search"])
    def search_image(file: UploadFile = File(description="a photo: JPEG, PNG, WebP, GIF, ..."),
                     k: int = Form(10, ge=1, le=MAX_K),
                     category: str | None = Form(None, max_length=MAX_TEXT),
                     catalog_id: str | None = Form(None, max_length=MAX_TEXT,
                                                   description=CATALOG_HELP),
                     adult: bool | None = Form(None, description=ADULT_HELP),
                     against: Against = Form("image")) -> dict:
        """Listings that look like an uploaded photo, best first."""
        start = time.perf_counter()
        image = photo(file)
        current = index()
        hits = hybrid.search_image(current, image, k, against=against,
                                   category=(category or "").strip() or None,
                                   catalog_id=(catalog_id or "").strip() or None, adult=adult)
        return {"results": _results(hits), "against": against, "mode": "vector",
                "took_ms": (time.perf_counter() - start) * 1000, "generation": current.generation}

    @app.get("/similar/{product_id:path}", response_model=SimilarResponse, tags=["search"])
    def similar(product_id: str, k: int = Query(10, ge=1, le=MAX_K),
                adult: bool | None = Query(None, description=ADULT_HELP)) -> dict:
        """Product matching: listings of the same catalog first, then the nearest other listings
        (``adult`` filters both; the product itself is answered whatever its flag)."""
        start = time.perf_counter()
        current = index()
        found = current.similar(product_id, k, adult=adult)
        if found is None:
            raise HTTPException(404, f"no listing with product_id {product_id!r} in the index")
        item, hits = found
        return {"product": _listing_out(item), "results": _results(hits),
                "took_ms": (time.perf_counter() - start) * 1000, "generation": current.generation}


def _classify_routes(app: FastAPI, index, photo) -> None:
    @app.post("/classify", response_model=ClassifyResponse, tags=["classify"])
    def classify(title: str | None = Form(None, max_length=MAX_TEXT),
                 file: UploadFile | None = File(None, description="a photo of the listing"),
                 top: int = Form(5, ge=1, le=20),
                 exclude: str | None = Form(None, max_length=MAX_TEXT,
                                            description="product_id of an indexed listing left "
                                                        "out of the vote (evaluating a listing "
                                                        "the index holds)")) -> dict:
        """Top categories and the adult probability of a listing's title and/or photo."""
        start = time.perf_counter()
        title = (title or "").strip() or None
        image = photo(file) if file is not None else None
        if title is None and image is None:
            raise HTTPException(422, "give a title, a photo (file) or both")
        result = index().classify(title, image, top=top, exclude=(exclude or "").strip() or None)
        return {"categories": [{"category": c, "score": s} for c, s in result.categories],
                "adult_probability": result.adult_probability, "input": result.modality,
                "took_ms": (time.perf_counter() - start) * 1000}

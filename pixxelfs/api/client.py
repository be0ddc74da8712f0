"""The async client of the Pixxel REST API (httpx under trio).

This module owns everything between a Python call and the wire: authentication, the
``User-Agent``, mapping HTTP answers to the domain errors of :mod:`pixxelfs.errors`, retries of
transient failures (through :mod:`pixxelfs.remote.retry`), the three paginated listings, and the
create-then-poll dance of download resources. It caches nothing (that is ``catalog``'s and
``remote``'s job) and never raises ``FUSEError``.

The API key is a credential: it lives only in the ``Authorization`` header and is never logged,
put in an exception message or shown by ``repr``. Requests are logged by *path template*
(``GET /v0/catalogs/{id}``), so neither ids nor query strings reach the logs.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Literal, NamedTuple, TypeVar
from urllib.parse import quote

import httpx
import trio

from pixxelfs import __version__
from pixxelfs.api.models import (
    DOWNLOAD_STATUSES,
    Catalog,
    DownloadResource,
    OrderItem,
    Project,
    require_object,
)
from pixxelfs.errors import (
    ApiError,
    ApiUnavailableError,
    AuthError,
    BadRequestError,
    ConfigError,
    DownloadFailedError,
    DownloadTimeoutError,
    MalformedResponseError,
    NotFoundError,
    PixxelfsError,
)
from pixxelfs.logs import redact_text
from pixxelfs.remote.retry import RetryPolicy, retrying

log = logging.getLogger(__name__)

USER_AGENT = f"pixxelfs/{__version__}"

# A server that ignores paging and invents ids forever must still end: no listing is longer.
MAX_PAGES = 10_000
# ``page_num`` of the first project page; the base is undocumented, 1 is the common reading.
FIRST_PAGE_NUM = 1
# Error texts quoted from the server are cut to this many characters.
MAX_QUOTED = 200
# 408/429 (and every 5xx) mean "try again later".
_TRANSIENT_STATUSES = frozenset({408, 429})
# Transport errors raised before any byte of the request left: retrying cannot duplicate work.
_UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

M = TypeVar("M", Catalog, OrderItem, Project)
T = TypeVar("T")


@dataclass(frozen=True)
class _Endpoint:
    """One API operation; ``label`` (method + path template) names it in logs, stats, errors."""

    method: Literal["GET", "POST"]
    template: str
    by_id: bool = False

    @property
    def label(self) -> str:
        return f"{self.method} {self.template}"

    def path(self, **params: str) -> str:
        return self.template.format(**{k: quote(v, safe="") for k, v in params.items()})


PING = _Endpoint("GET", "/ping")
LIST_PROJECTS = _Endpoint("GET", "/v0/projects")
GET_PROJECT = _Endpoint("GET", "/v0/projects/{id}", by_id=True)
LIST_ORDER_ITEMS = _Endpoint("GET", "/v0/order-items")
GET_ORDER_ITEM = _Endpoint("GET", "/v0/order-items/{id}", by_id=True)
SEARCH_CATALOGS = _Endpoint("POST", "/v0/catalogs/search")
GET_CATALOG = _Endpoint("GET", "/v0/catalogs/{id}", by_id=True)
CREATE_DOWNLOAD = _Endpoint("POST", "/v0/catalogs/download")
GET_DOWNLOAD = _Endpoint("GET", "/v0/catalogs/download/{download_id}", by_id=True)


@dataclass(frozen=True)
class ClientStats:
    """A snapshot of the client's counters.

    ``calls`` counts HTTP requests sent per endpoint label (retries included), ``retries`` the
    requests that repeated a failed one, ``errors`` the errors raised to callers by class name,
    ``skipped`` the malformed listing elements dropped.
    """

    calls: Mapping[str, int] = field(default_factory=dict)
    retries: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    skipped: int = 0


class _TransientError(ApiUnavailableError):
    """One attempt failed in a way that a later attempt may not; carries the server's hint."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None):
        super().__init__(message, status=status)
        self.retry_after = retry_after  # read by pixxelfs.remote.retry.retry_after_of


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _TransientError)


class _Page(NamedTuple):
    items: list[Any]
    total: int | None
    server_limit: int | None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None.

    Not clamped here: :class:`RetryPolicy` bounds the wait by its ``max_retry_after``.
    """
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _non_negative_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _clip(text: str) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= MAX_QUOTED else one_line[: MAX_QUOTED - 3] + "..."


def _error_envelope(response: httpx.Response) -> tuple[str | None, str | None]:
    """``(code, message)`` from ``{"error": {"code", "message"}}`` or a looser error object."""
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, Mapping):
        return None, None
    inner = body.get("error")
    if isinstance(inner, str):
        return None, inner
    source = inner if isinstance(inner, Mapping) else body
    code, message = source.get("code"), source.get("message")
    return (
        str(code) if isinstance(code, str | int) else None,
        message if isinstance(message, str) else None,
    )


def _says_not_found(code: str | None, message: str | None) -> bool:
    text = f"{code or ''} {message or ''}".lower().replace("_", " ").replace("-", " ")
    return "not found" in text or "notfound" in text


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first leaf error of a nursery's group, so callers see a plain domain error."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _joined(values: Iterable[str] | str) -> str:
    return values if isinstance(values, str) else ",".join(values)


def _page_fingerprint(items: list[Any]) -> str:
    encoded = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


def _list_field(body: Any, key: str, listing: str) -> tuple[Mapping[str, Any], list[Any]]:
    """The envelope and its element list; ``null`` (a Go nil slice) counts as empty."""
    obj = require_object(body, listing)
    if key not in obj:
        raise MalformedResponseError(f"{listing}: the answer has no {key!r} list")
    items = obj[key]
    if items is None:
        return obj, []
    if not isinstance(items, list):
        raise MalformedResponseError(
            f"{listing}: {key!r} must be a list, got {type(items).__name__}"
        )
    return obj, items


def _pagination_page(body: Any, key: str, listing: str) -> _Page:
    """A ``{<key>: [...], "pagination": {limit, offset, total}}`` page."""
    obj, items = _list_field(body, key, listing)
    pagination = obj.get("pagination")
    if not isinstance(pagination, Mapping):
        pagination = {}
    limit = _non_negative_int(pagination.get("limit"))
    return _Page(items, _non_negative_int(pagination.get("total")), limit or None)


def _projects_page(body: Any) -> _Page:
    """A ``{"count": N, "projects": [...]}`` page (``page_num``/``page_size`` paging)."""
    obj, items = _list_field(body, "projects", "project listing")
    return _Page(items, _non_negative_int(obj.get("count")), None)


def _project_of(body: Any) -> Project:
    """``GET /v0/projects/{id}`` wraps the project as ``{"project": {...}}``; accept it bare too."""
    obj = require_object(body, "project answer")
    return Project.from_json(obj.get("project", obj))


def _id_list(values: Sequence[str] | str | None) -> list[str]:
    """A list of ids; a lone string is one id, not its characters."""
    if values is None:
        return []
    return [values] if isinstance(values, str) else list(values)


def _check_key(api_key: str) -> None:
    """Refuse a key that cannot be a header value (the message must not quote the key)."""
    if not api_key or any(c.isspace() or not c.isprintable() or not c.isascii() for c in api_key):
        raise ConfigError("the API key is empty or contains spaces or non-printable characters")


class PixxelClient:
    """Typed async access to the Pixxel API; use as ``async with PixxelClient(...) as client``.

    Satisfies ``pixxelfs.remote.signed_url.DownloadApi`` (:meth:`wait_for_download`) and
    ``pixxelfs.catalog.service.CatalogApi`` (the three ``iter_*`` listings).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        auth_scheme: Literal["raw", "bearer"] = "raw",
        page_size: int = 100,
        parallel_pages: int = 4,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        download_poll_initial: float = 0.25,
        download_poll_max: float = 5.0,
        download_deadline: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        _check_key(api_key)
        if auth_scheme not in ("raw", "bearer"):
            raise ValueError(f"auth_scheme must be 'raw' or 'bearer', not {auth_scheme!r}")
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        if not 0 < download_poll_initial <= download_poll_max:
            raise ValueError("need 0 < download_poll_initial <= download_poll_max")
        self.base_url = base_url.rstrip("/")
        self.auth_scheme = auth_scheme
        self.page_size = page_size
        # Listing pages fetched at once when the total is known (a 10,000-scene catalog is 100
        # pages: sequential round trips would dominate a cold mount).
        self.parallel_pages = max(1, parallel_pages)
        self.retry = retry if retry is not None else RetryPolicy()
        self.download_poll_initial = download_poll_initial
        self.download_poll_max = download_poll_max
        self.download_deadline = download_deadline
        self._secrets = (api_key,)
        authorization = api_key if auth_scheme == "raw" else f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": authorization, "User-Agent": USER_AGENT},
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
        )
        self._calls: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._retries = 0
        self._skipped = 0

    def __repr__(self) -> str:
        return f"PixxelClient(base_url={self.base_url!r}, auth_scheme={self.auth_scheme!r})"

    async def __aenter__(self) -> PixxelClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def stats(self) -> ClientStats:
        return ClientStats(
            calls=dict(self._calls),
            retries=self._retries,
            errors=dict(self._errors),
            skipped=self._skipped,
        )

    # ----------------------------------------------------------------------------- endpoints

    async def ping(self) -> str:
        """The health check's answer (``"pong"``); raises if the API cannot be reached."""
        body = await self._call(PING)
        return body if isinstance(body, str) else json.dumps(body)

    async def iter_projects(self) -> AsyncIterator[Project]:
        """Every project visible to the key (``page_num``/``page_size`` paging)."""

        async def fetch(page_index: int, offset: int) -> _Page:
            params = {"page_num": page_index + FIRST_PAGE_NUM, "page_size": self.page_size}
            body = await self._call(LIST_PROJECTS, params=params)
            return self._parsed(_projects_page, body)

        async for project in self._paginate("project listing", fetch, Project.from_json):
            yield project

    async def get_project(self, project_id: str) -> Project:
        body = await self._call(GET_PROJECT, path_params={"id": project_id})
        return self._parsed(_project_of, body)

    async def iter_order_items(
        self,
        *,
        ids: Iterable[str] | str | None = None,
        project_ids: Iterable[str] | str | None = None,
        order_ids: Iterable[str] | str | None = None,
        status: str | None = None,
        type: str | None = None,
    ) -> AsyncIterator[OrderItem]:
        """Order items matching the filters (id lists are sent comma-joined)."""
        filters: dict[str, str] = {}
        for name, values in (("ids", ids), ("project_ids", project_ids), ("order_ids", order_ids)):
            if values is None:
                continue
            joined = _joined(values)
            if not joined:
                return  # an empty id list matches nothing; the server might read it as "all"
            filters[name] = joined
        filters.update({k: v for k, v in (("status", status), ("type", type)) if v is not None})

        listing = "order item listing"

        async def fetch(page_index: int, offset: int) -> _Page:
            params = {**filters, "limit": self.page_size, "offset": offset}
            body = await self._call(LIST_ORDER_ITEMS, params=params)
            return self._parsed(partial(_pagination_page, key="order_items", listing=listing), body)

        async for item in self._paginate(listing, fetch, OrderItem.from_json):
            yield item

    async def get_order_item(self, order_item_id: str) -> OrderItem:
        body = await self._call(GET_ORDER_ITEM, path_params={"id": order_item_id})
        return self._parsed(OrderItem.from_json, body)

    async def iter_catalogs(
        self, search: Mapping[str, Any] | None = None
    ) -> AsyncIterator[Catalog]:
        """Catalog entries matching ``search`` (a catalog filter; its limit/offset are ours).

        The spec's default ``limit`` is 2, so the client always sends its own page size.
        """
        base = {k: v for k, v in (search or {}).items() if k not in ("limit", "offset")}
        listing = "catalog search"

        async def fetch(page_index: int, offset: int) -> _Page:
            body_in = {**base, "limit": self.page_size, "offset": offset}
            body = await self._call(SEARCH_CATALOGS, json_body=body_in)
            return self._parsed(partial(_pagination_page, key="catalogs", listing=listing), body)

        async for catalog in self._paginate(listing, fetch, Catalog.from_json):
            yield catalog

    async def get_catalog(self, catalog_id: str) -> Catalog:
        body = await self._call(GET_CATALOG, path_params={"id": catalog_id})
        return self._parsed(Catalog.from_json, body)

    async def create_download(
        self,
        *,
        catalog_ids: Sequence[str] | str | None = None,
        order_item_ids: Sequence[str] | str | None = None,
    ) -> DownloadResource:
        """Ask for a download resource (exactly one of the two id lists, non-empty).

        Retried only when the request surely did not reach the server (connect errors) or the
        server said so (429/5xx). A 5xx after the resource was in fact created leaves an orphan
        resource behind; that is harmless (resources are cheap and expire).
        """
        body_in = {"catalog_ids": _id_list(catalog_ids), "order_item_ids": _id_list(order_item_ids)}
        if bool(body_in["catalog_ids"]) == bool(body_in["order_item_ids"]):
            raise ValueError("give exactly one of catalog_ids and order_item_ids, non-empty")
        body = await self._call(CREATE_DOWNLOAD, json_body=body_in, unsent_only=True)
        return self._parsed(DownloadResource.from_json, body)

    async def get_download(self, download_id: str) -> DownloadResource:
        body = await self._call(GET_DOWNLOAD, path_params={"download_id": download_id})
        return self._parsed(DownloadResource.from_json, body)

    async def wait_for_download(self, catalog_id: str) -> DownloadResource:
        """Create a download resource for one catalog entry and poll it until it has a URL.

        Polls back off exponentially from ``download_poll_initial`` to ``download_poll_max``;
        the whole wait, HTTP calls included, is bounded by ``download_deadline``.
        """
        deadline = trio.current_time() + self.download_deadline
        last: DownloadResource | None = None
        reported: set[str] = set()
        with trio.move_on_at(deadline):
            last = await self.create_download(catalog_ids=[catalog_id])
            delay = self.download_poll_initial
            while not self._download_done(catalog_id, last, reported):
                await trio.sleep(delay)
                delay = min(delay * 2, self.download_poll_max)
                last = await self.get_download(last.id)
            return last
        where = f" (download {last.id}, last status {last.status!r})" if last else ""
        exc = DownloadTimeoutError(
            f"catalog {catalog_id}: download not ready after {self.download_deadline:g} s{where}"
        )
        self._count_error(exc)
        raise exc

    def _download_done(
        self, catalog_id: str, resource: DownloadResource, reported: set[str]
    ) -> bool:
        """True once ``resource`` has its URL; raises if it failed. Unknown statuses wait."""
        if resource.is_ready:
            return True
        if resource.has_failed:
            exc = DownloadFailedError(
                f"catalog {catalog_id}: download {resource.id} ended in status 'failed'"
            )
            self._count_error(exc)
            raise exc
        if resource.status not in DOWNLOAD_STATUSES and resource.status not in reported:
            reported.add(resource.status)
            log.debug("download status %r is unknown; treating it as not ready", resource.status)
        return False

    # ----------------------------------------------------------------------------- plumbing

    async def _paginate(
        self,
        listing: str,
        fetch: Callable[[int, int], Awaitable[_Page]],
        parse: Callable[[Any], M],
    ) -> AsyncIterator[M]:
        """Walk pages until one is empty or short, the total is reached, or paging is ignored.

        Each element is parsed on its own: a malformed one is skipped with a warning. A page
        equal to the previous one, or bringing only ids already seen, means the server ignores
        paging. ``MAX_PAGES`` bounds a server that invents new ids forever without a total.
        """
        seen: set[str] = set()
        offset = 0
        previous: str | None = None
        pending = await self._fetch_pages(fetch, 0, 0, 1)
        for page_index in range(MAX_PAGES):
            page = pending.pop(0)
            fingerprint = _page_fingerprint(page.items)
            if page.items and fingerprint == previous:
                log.warning("%s: the server repeated a page; it ignores paging", listing)
                return
            previous = fingerprint
            fresh = repeated = 0
            for model in self._parse_elements(listing, page.items, parse):
                if model.id in seen:
                    repeated += 1
                    continue
                seen.add(model.id)
                fresh += 1
                yield model
            if repeated and not fresh:
                log.warning("%s: a page brought only ids seen before; it ignores paging", listing)
                return
            offset += len(page.items)
            limit = min(self.page_size, page.server_limit or self.page_size)
            if len(page.items) < limit or (page.total is not None and offset >= page.total):
                return
            if not pending:
                ahead = self._pages_ahead(page, offset, page_index)
                pending = await self._fetch_pages(fetch, page_index + 1, offset, ahead)
        log.warning("%s: stopped after %d pages", listing, MAX_PAGES)

    def _pages_ahead(self, page: _Page, offset: int, page_index: int) -> int:
        """How many pages to fetch at once: several when a total says how many are left.

        Only from the third page on: the second one shows whether the server honours paging,
        so a server that ignores it costs no wasted requests.
        """
        if page_index < 1 or page.total is None or len(page.items) != self.page_size:
            return 1
        remaining = -(-(page.total - offset) // self.page_size)
        return max(1, min(self.parallel_pages, remaining, MAX_PAGES - page_index - 1))

    async def _fetch_pages(
        self, fetch: Callable[[int, int], Awaitable[_Page]], index: int, offset: int, count: int
    ) -> list[_Page]:
        """Pages ``index .. index+count-1`` (offsets one page size apart), fetched concurrently."""
        pages: list[_Page | None] = [None] * count

        async def one(i: int) -> None:
            pages[i] = await fetch(index + i, offset + i * self.page_size)

        try:
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(one, i)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        return [page for page in pages if page is not None]

    def _parse_elements(self, listing: str, items: list[Any], parse: Callable[[Any], M]) -> list[M]:
        models: list[M] = []
        for raw in items:
            try:
                models.append(parse(raw))
            except MalformedResponseError as exc:
                self._skipped += 1
                log.warning("%s: skipped a malformed element: %s", listing, exc)
        return models

    def _parsed(self, parse: Callable[[Any], T], body: Any) -> T:
        try:
            return parse(body)
        except MalformedResponseError as exc:
            self._count_error(exc)
            raise

    async def _call(
        self,
        endpoint: _Endpoint,
        *,
        path_params: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        unsent_only: bool = False,
    ) -> Any:
        """One logical call: attempts under the retry policy, answer decoded from JSON."""
        path = endpoint.path(**(path_params or {}))

        async def attempt() -> Any:
            return await self._attempt(endpoint, path, params, json_body, unsent_only)

        try:
            return await retrying(
                self.retry, attempt, _is_transient, endpoint.label, on_retry=self._note_retry
            )
        except PixxelfsError as exc:
            if isinstance(exc, ApiError) and isinstance(exc.__cause__, ApiError):
                exc.status = exc.status or exc.__cause__.status  # keep the last HTTP status
            self._count_error(exc)
            raise

    def _note_retry(self, exc: Exception, wait: float) -> None:
        self._retries += 1

    async def _attempt(
        self,
        endpoint: _Endpoint,
        path: str,
        params: Mapping[str, Any] | None,
        json_body: Any,
        unsent_only: bool,
    ) -> Any:
        """Send one request; a transient failure raises :class:`_TransientError`."""
        self._calls[endpoint.label] += 1
        started = trio.current_time()
        try:
            response = await self._http.request(
                endpoint.method, path, params=params, json=json_body
            )
        except httpx.TransportError as exc:
            elapsed = (trio.current_time() - started) * 1000
            log.debug("%s -> %s after %.1f ms", endpoint.label, type(exc).__name__, elapsed)
            if unsent_only and not isinstance(exc, _UNSENT_ERRORS):
                raise ApiUnavailableError(
                    f"{endpoint.label}: {type(exc).__name__} (not retried: the request may"
                    " have been carried out)"
                ) from exc
            raise _TransientError(type(exc).__name__, retry_after=None) from exc
        elapsed = (trio.current_time() - started) * 1000
        log.debug("%s -> %d in %.1f ms", endpoint.label, response.status_code, elapsed)
        if response.is_success:
            return self._decoded(endpoint, response)
        raise self._status_error(endpoint, response)

    def _decoded(self, endpoint: _Endpoint, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            kind = response.headers.get("content-type", "no content type")
            raise MalformedResponseError(
                f"{endpoint.label}: the answer is not JSON ({_clip(kind)})"
            ) from None

    def _status_error(self, endpoint: _Endpoint, response: httpx.Response) -> ApiError:
        """The domain error for a non-2xx answer, quoting the envelope's code and message."""
        status = response.status_code
        code, message = _error_envelope(response)
        detail = f"HTTP {status}"
        if code:
            detail += f" [{_clip(code)}]"
        if message:
            detail += f": {_clip(message)}"
        detail = redact_text(detail, self._secrets)
        if status in _TRANSIENT_STATUSES or status >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            return _TransientError(detail, status=status, retry_after=retry_after)
        text = f"{endpoint.label}: {detail}"
        if status in (401, 403):
            return AuthError(text, status=status, code=code)
        if status == 404 or (status == 400 and endpoint.by_id and _says_not_found(code, message)):
            return NotFoundError(text, status=status, code=code)
        if status == 400:
            return BadRequestError(text, status=status, code=code)
        return ApiError(text, status=status, code=code)

    def _count_error(self, exc: PixxelfsError) -> None:
        self._errors[type(exc).__name__] += 1

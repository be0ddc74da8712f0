"""The object-storage side: signed GET/HEAD of delivery packages, S3-style.

No API key is needed (an ``Authorization`` header is ignored). Supports one ``Range`` per request
(``a-b``, ``a-``, ``-n``; several ranges or bad syntax are ignored and the whole object is sent, as
S3 does), ``If-Match`` (412 on mismatch), strong ETags and 416 for unsatisfiable ranges. Bodies are
streamed from disk in chunks. Errors use S3's XML error body.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import os
import re

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pixxelfs.emulator.packages import PackageInfo
from pixxelfs.emulator.signing import BUCKET_PREFIX, Verdict
from pixxelfs.emulator.state import EmulatorState
from pixxelfs.emulator.stats import StorageGet

CHUNK = 256 * 1024
ABORTED = "pixxelfs.emulator.aborted"  # scope key the fault middleware sets to stop a body early
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def s3_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>emulator</RequestId></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml", headers=headers)


class RangeNotSatisfiable(Exception):
    """The single requested range lies wholly beyond the object (answered with 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Inclusive ``(start, end)``, or ``None`` for "send the whole object"."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last n bytes
        length = int(last)
        if not length or not size:
            raise RangeNotSatisfiable
        return (max(0, size - length), size - 1)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # syntactically invalid: ignore, as RFC 9110 says
    if start >= size:
        raise RangeNotSatisfiable
    return (start, end)


class PackageResponse(Response):
    """A file slice streamed in chunks; stops early when the fault layer aborts the body."""

    def __init__(self, info: PackageInfo, status: int, start: int, end: int, head: bool) -> None:
        super().__init__(status_code=status, media_type="application/zip")
        self.info, self.start, self.end, self.head = info, start, end, head
        length = max(0, end - start + 1)
        self.headers["content-length"] = str(length)
        self.headers.update(_validators(info))
        if status == 206:
            self.headers["content-range"] = f"bytes {start}-{end}/{info.size}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if self.head:
            await send({"type": "http.response.body", "body": b""})
            return
        fd = os.open(self.info.path, os.O_RDONLY)
        try:
            offset = self.start
            while offset <= self.end and not scope.get(ABORTED):
                size = min(CHUNK, self.end - offset + 1)
                chunk = await trio.to_thread.run_sync(os.pread, fd, size, offset)
                offset += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            os.close(fd)
        await send({"type": "http.response.body", "body": b""})


def _validators(info: PackageInfo) -> dict[str, str]:
    return {
        "etag": info.etag,
        "last-modified": email.utils.format_datetime(info.modified.astimezone(dt.UTC), usegmt=True),
        "accept-ranges": "bytes",
    }


async def _resolve(state: EmulatorState, key: str) -> PackageInfo | None:
    """A path key is a download id (its package) or a catalog id (that scene's package)."""
    download = state.downloads.get(key)
    if download is not None:
        ids = download.catalog_ids
        if any(cid not in state.world.by_id for cid in ids):
            return None
        if len(ids) == 1:
            crafted = state.hostile.members.get(ids[0])
            if crafted is not None:
                return await state.packages.ensure_crafted(ids[0], crafted)
            return await state.packages.ensure(ids[0])
        return await state.packages.ensure_combined(download.id, ids)
    if key in state.world.by_id:
        return await state.packages.ensure(key)
    return None


async def get_object(request: Request) -> Response:
    state: EmulatorState = request.app.state.emulator
    key = request.path_params["key"]
    record = StorageGet(package=key, start=None, end=None, status=0)
    response = await _answer(state, request, key, record)
    record.status = response.status_code
    if request.method == "GET":
        state.stats.storage_gets.append(record)
    return response


async def _answer(state: EmulatorState, request: Request, key: str, record: StorageGet) -> Response:
    verdict = state.signer.verify(request.url.path, request.query_params, dt.datetime.now(dt.UTC))
    if verdict is Verdict.EXPIRED:
        return s3_error(403, "AccessDenied", "Request has expired")
    if verdict is Verdict.BAD_SIGNATURE:
        return s3_error(403, "SignatureDoesNotMatch", "The request signature does not match")
    info = await _resolve(state, key)
    if info is None:
        return s3_error(404, "NoSuchKey", "The specified key does not exist.")
    if_match = request.headers.get("if-match")
    if if_match is not None and if_match.strip() != "*" and info.etag not in _etags(if_match):
        return s3_error(412, "PreconditionFailed", "At least one of the preconditions failed")
    head = request.method == "HEAD"
    try:
        wanted = parse_range(request.headers.get("range"), info.size)
    except RangeNotSatisfiable:
        headers = {"content-range": f"bytes */{info.size}", **_validators(info)}
        return s3_error(416, "InvalidRange", "The requested range is not satisfiable", headers)
    if wanted is None:
        record.start, record.end = 0, info.size - 1
        return PackageResponse(info, 200, 0, info.size - 1, head)
    record.start, record.end = wanted
    return PackageResponse(info, 206, wanted[0], wanted[1], head)


def _etags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",")]


def storage_routes() -> list[Route]:
    """HEAD first: Starlette's GET routes also answer HEAD, and stats should tell them apart."""
    path = BUCKET_PREFIX + "/{key}/{name}"
    return [
        Route(path, get_object, methods=["HEAD"], name="storage.head"),
        Route(path, get_object, methods=["GET"], name="storage.get"),
    ]

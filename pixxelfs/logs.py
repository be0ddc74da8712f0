"""Logging set-up and redaction.

Two secrets must never reach a log line: the API key and the query string of a signed URL
(its signature is a bearer credential). :func:`redact_url` is for code that wants to name a
URL; :class:`RedactingFilter` is the safety net on every handler, so a secret that slips into
a message or an exception text is masked before it is written.
"""

from __future__ import annotations

import logging
import re
import sys
from urllib.parse import urlsplit, urlunsplit

# A query string, unless it is already redacted (by redact_url).
_URL_QUERY = re.compile(r"(https?://[^\s?#\"'<>]+)\?(?!<redacted>)[^\s\"'<>]*")


def redact_url(url: str) -> str:
    """The URL without its query string (where signatures live): safe to log."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "<redacted>", ""))


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask URL query strings and any of ``secrets`` found in ``text``."""
    text = _URL_QUERY.sub(r"\1?<redacted>", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message with secrets masked."""

    def __init__(self, secrets: tuple[str, ...] = ()):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        record.msg = redact_text(message, self.secrets)
        record.args = None
        return True


def setup_logging(*, debug: bool = False, secrets: tuple[str, ...] = (), stream=None) -> None:
    """Configure the root logger once: one line per record, secrets redacted."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # httpx logs every request URL at INFO, query string included: keep it quiet.
    for noisy in ("httpx", "httpcore", "hypercorn.access", "rasterio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

"""The errno table and log redaction: pure functions, checked exhaustively."""

from __future__ import annotations

import errno
import io
import logging

import pytest

from pixxelfs import errors
from pixxelfs.logs import RedactingFilter, redact_text, redact_url, setup_logging


@pytest.mark.parametrize(
    ("exc", "number"),
    [
        (errors.NotFoundError("x"), errno.ENOENT),
        (errors.AuthError("x"), errno.EACCES),
        (errors.PackageChangedError("x"), errno.ESTALE),
        (errors.DownloadTimeoutError("x"), errno.EAGAIN),
        (errors.ApiUnavailableError("x"), errno.EIO),
        (errors.DownloadFailedError("x"), errno.EIO),
        (errors.CorruptPackageError("x"), errno.EIO),
        (errors.SignedUrlExpiredError("x"), errno.EIO),
        (errors.OfflineError("x"), errno.EHOSTUNREACH),
        (ValueError("a bug"), errno.EIO),
    ],
)
def test_every_domain_error_has_its_errno(exc: BaseException, number: int) -> None:
    assert errors.to_errno(exc) == number


def test_every_error_class_maps_to_a_real_errno() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    for cls in classes:
        instance = cls("x")
        assert errors.to_errno(instance) in errno.errorcode


def test_signed_url_queries_and_secrets_are_redacted() -> None:
    url = "http://127.0.0.1:8700/storage/b/o.zip?X-Amz-Date=20261125T000000Z&X-Amz-Signature=abc"
    assert "abc" not in redact_url(url)
    assert redact_url(url).startswith("http://127.0.0.1:8700/storage/b/o.zip?")
    assert redact_url("http://h/p") == "http://h/p"
    text = f"GET {url} failed for key k3y"
    cleaned = redact_text(text, ("k3y",))
    assert "X-Amz-Signature" not in cleaned and "k3y" not in cleaned


def test_log_lines_and_tracebacks_never_carry_secrets() -> None:
    stream = io.StringIO()
    setup_logging(secrets=("the-key",), stream=stream)
    log = logging.getLogger("pixxelfs.test")
    try:
        raise RuntimeError("boom http://s/x?sig=SECRETSIG with the-key")
    except RuntimeError:
        log.exception("reading %s", "http://s/y?X-Amz-Signature=SECRETSIG2")
    output = stream.getvalue()
    assert "SECRETSIG" not in output and "the-key" not in output
    assert "boom" in output and "reading http://s/y" in output
    logging.getLogger().handlers.clear()


def test_filter_keeps_records_and_masks_arguments() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key=%s", ("zzz",), None)
    assert RedactingFilter(("zzz",)).filter(record)
    assert record.getMessage() == "key=<redacted>"

"""Domain errors of pixxelfs and the one table that turns them into errno values.

Lower layers (api, catalog, remote) raise these; only ``pixxelfs.fs`` converts them to
``pyfuse3.FUSEError`` through :func:`to_errno`. Messages never contain the API key or a
full signed URL.

    PixxelfsError
    ├── ConfigError                 bad command line / key file / option (exit code 2)
    ├── ApiError                    the Pixxel API answered with an error
    │   ├── AuthError               403: missing, wrong or under-privileged key
    │   ├── NotFoundError           404 (or 400 for an unknown id)
    │   ├── BadRequestError         400
    │   └── ApiUnavailableError     5xx / 429 / transport errors after all retries
    ├── MalformedResponseError      a JSON answer that does not have the documented shape
    ├── DownloadFailedError         the download resource ended in ``failed``
    ├── DownloadTimeoutError        the download resource never became ready in time
    ├── StorageError                object storage misbehaved (bad range, short body...)
    │   ├── SignedUrlExpiredError   403 from storage: the URL expired or its signature is bad
    │   └── PackageChangedError     the package's ETag changed under an open file (412)
    ├── CorruptPackageError         the ZIP package cannot be parsed / fails a CRC check
    └── OfflineError                data needed is neither cached nor reachable
"""

from __future__ import annotations

import errno


class PixxelfsError(Exception):
    """Base of every error pixxelfs raises on purpose."""


class ConfigError(PixxelfsError):
    """The user's configuration is unusable; the message says what to change."""


class ApiError(PixxelfsError):
    """The Pixxel API answered with an error status."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class AuthError(ApiError):
    """The API refused the key (the service answers 403 for all auth failures)."""


class NotFoundError(ApiError):
    """The requested resource does not exist (or is not visible to this key)."""


class BadRequestError(ApiError):
    """The API rejected the request as malformed."""


class ApiUnavailableError(ApiError):
    """The API (or storage) kept failing transiently until the retries ran out."""


class MalformedResponseError(PixxelfsError):
    """An answer could not be understood (bad JSON, wrong types, missing fields)."""


class DownloadFailedError(PixxelfsError):
    """The API reported the download resource as ``failed``."""


class DownloadTimeoutError(PixxelfsError):
    """The download resource did not become ready before the deadline."""


class StorageError(PixxelfsError):
    """Object storage answered in a way that cannot give correct bytes."""


class SignedUrlExpiredError(StorageError):
    """Storage refused the signed URL (expired or bad signature): renew and retry."""


class PackageChangedError(StorageError):
    """The package changed (new ETag) while a file of the old version was open."""


class CorruptPackageError(PixxelfsError):
    """The delivery package is not a valid ZIP, or a member fails its CRC."""


class OfflineError(PixxelfsError):
    """The bytes asked for are not cached and the API cannot be reached."""


# The order matters: the first matching class wins, so subclasses come before bases.
_ERRNO_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (NotFoundError, errno.ENOENT),
    (AuthError, errno.EACCES),
    (PackageChangedError, errno.ESTALE),
    (DownloadTimeoutError, errno.EAGAIN),
    (OfflineError, errno.EHOSTUNREACH),
    (ApiUnavailableError, errno.EIO),
    (PixxelfsError, errno.EIO),
)


def to_errno(exc: BaseException) -> int:
    """Map a domain error to the errno the filesystem returns (EIO for anything unknown)."""
    for cls, number in _ERRNO_TABLE:
        if isinstance(exc, cls):
            return number
    return errno.EIO

"""S3-presigned-style URLs for the emulator's object storage.

``{base}/storage/pixxel-deliveries/{key}/{name}.zip?X-Amz-Date=..&X-Amz-Expires=..&X-Amz-Signature=..``
uses the same query names as AWS SigV4 presigned URLs, so a client can read the expiry the way it
would for real S3. The signature is an HMAC-SHA256 over path, date and lifetime with a secret that
lives only as long as the emulator, so URLs from an earlier run never validate.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import math
from collections.abc import Mapping
from urllib.parse import quote, urlencode

BUCKET_PREFIX = "/storage/pixxel-deliveries"
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"


class Verdict(enum.Enum):
    OK = "ok"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad_signature"


class UrlSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _signature(self, path: str, date: str, expires: str) -> str:
        message = f"{path}\n{date}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, base_url: str, key: str, name: str, lifetime: float, now: dt.datetime) -> str:
        path = f"{BUCKET_PREFIX}/{quote(key)}/{quote(name)}.zip"
        date = now.astimezone(dt.UTC).strftime(_DATE_FORMAT)
        expires = str(max(1, math.ceil(lifetime)))
        query = {
            "X-Amz-Date": date,
            "X-Amz-Expires": expires,
            "X-Amz-Signature": self._signature(path, date, expires),
        }
        return f"{base_url.rstrip('/')}{path}?{urlencode(query)}"

    def verify(self, raw_path: str, query: Mapping[str, str], now: dt.datetime) -> Verdict:
        """Check the signature first (a forged expiry must not pass as merely expired)."""
        date, expires = query.get("X-Amz-Date", ""), query.get("X-Amz-Expires", "")
        expected = self._signature(raw_path, date, expires)
        if not hmac.compare_digest(expected, query.get("X-Amz-Signature", "")):
            return Verdict.BAD_SIGNATURE
        try:
            signed_at = dt.datetime.strptime(date, _DATE_FORMAT).replace(tzinfo=dt.UTC)
            lifetime = int(expires)
        except ValueError:
            return Verdict.BAD_SIGNATURE
        if now > signed_at + dt.timedelta(seconds=lifetime):
            return Verdict.EXPIRED
        return Verdict.OK

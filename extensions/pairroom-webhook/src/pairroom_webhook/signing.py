"""The signature of a delivery: ``X-Pairroom-Signature: sha256=<hex HMAC-SHA256 of the body>``.

Receivers check it with ``verify`` (or the same three lines in their own language) over the raw
bytes of the body, before parsing it."""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Pairroom-Signature"


def sign(secret: str, body: bytes) -> str:
    """The header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """True if ``header`` is the signature of ``body`` under ``secret`` (compared in constant time)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)

"""AWS Signature Version 4 pre-signed S3 URLs (query-string authentication), stdlib only.

Theory of operation
-------------------
A run's start-up asks S3 a few questions before the first worker is launched (does the
bucket exist, which input frames are there) with pre-signed URLs fetched by ``urllib``.
Signing them with botocore's signer meant importing botocore's auth, request and
credentials modules, about 0.1 CPU-s of a start-up budget of 0.2; the signature itself is a
few HMACs. :func:`presign_url` computes the same URL that botocore's ``S3SigV4QueryAuth``
makes for the same request, credentials, region and time (tests/unit/test_sigv4.py holds
botocore to that as the referee), following the published algorithm
(https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html):

1. The operation's query parameters (already in ``url``) are decoded and re-encoded the
   way AWS expects (RFC 3986: everything but ``A-Z a-z 0-9 - . _ ~`` percent-encoded,
   UTF-8), followed by the authentication parameters ``X-Amz-Algorithm``,
   ``X-Amz-Credential``, ``X-Amz-Date``, ``X-Amz-Expires``, ``X-Amz-SignedHeaders`` (only
   ``host``) and ``X-Amz-Security-Token`` for temporary credentials.
2. The canonical request is the method, the path as given (S3 does not normalise it), the
   query sorted by its encoded pairs, the ``host`` header (the default port left out), and
   ``UNSIGNED-PAYLOAD``.
3. Its SHA-256 is signed with HMAC-SHA256 under the key derived from the secret key, the
   date, the region and the service; the signature is appended as ``X-Amz-Signature``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

__all__ = ["presign_url"]

_SAFE = "-._~"
"""Characters AWS leaves unencoded in query keys and values (RFC 3986 unreserved)."""


def _encode(text: str) -> str:
    return quote(text.encode("utf-8"), safe=_SAFE)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _host(url: str) -> str:
    """The ``host`` header for ``url``: lower case, no user info, no default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal (urlsplit drops its brackets)
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def presign_url(
    method: str,
    url: str,
    *,
    region: str,
    access_key: str,
    secret_key: str,
    token: str | None = None,
    expires: int = 3600,
    service: str = "s3",
    now: datetime.datetime | None = None,
) -> str:
    """``url`` pre-signed for ``method`` with SigV4 query-string authentication.

    Args:
        method: the HTTP method the URL will be used with (``GET``, ``HEAD``, ...).
        url: the request URL, path already percent-encoded, with the operation's query
            parameters (each key at most once).
        region: the signing region (``us-east-1``).
        access_key, secret_key, token: the credentials (``token``: temporary ones' session
            token, or None).
        expires: seconds the URL stays valid (``X-Amz-Expires``).
        service: the signing name of the service.
        now: the signing time (default: the current time); naive values are taken as UTC.

    Returns:
        the URL with the authentication parameters and ``X-Amz-Signature`` added.
    """
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    elif now.tzinfo is not None:
        now = now.astimezone(datetime.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    auth = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{access_key}/{scope}",
        "X-Amz-Date": stamp,
        "X-Amz-Expires": str(expires),
        "X-Amz-SignedHeaders": "host",
    }
    if token is not None:
        auth["X-Amz-Security-Token"] = token
    pairs = [(_encode(k), _encode(v)) for k, v in [*query.items(), *auth.items()]]
    canonical = "\n".join([
        method.upper(),
        parts.path,
        "&".join(f"{k}={v}" for k, v in sorted(pairs)),
        f"host:{_host(url)}\n",
        "host",
        "UNSIGNED-PAYLOAD",
    ])
    to_sign = "\n".join([
        "AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
    ])
    key = f"AWS4{secret_key}".encode()
    for part in (stamp[:8], region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    signed_query = "&".join(f"{k}={v}" for k, v in pairs) + f"&X-Amz-Signature={signature}"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, signed_query, parts.fragment))

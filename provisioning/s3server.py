"""The embedded S3 endpoint: moto's S3 implementation behind a strict AWS SigV4 check.

For development, tests and the README's main job, where MinIO is not available. Moto
accepts any credentials on its own (and its optional IAM check mis-verifies some of
s3fs's requests), so this module verifies every request's signature against the one
configured key pair before moto sees it. Data lives in memory: it is gone when the
server stops. Production hosts run MinIO (roles/object_store).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from .config import Credentials

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
MAX_CLOCK_SKEW = dt.timedelta(minutes=15)
# Unauthenticated liveness, at MinIO's path, so one health check serves both backends.
HEALTH_PATHS = ("/minio/health/live", "/minio/health/ready")


def _uri_encode(text: str, safe: str) -> str:
    return quote(text, safe=safe + "-_.~")


def canonical_request(method: str, raw_path: str, raw_query: str, headers: dict[str, str],
                      signed_headers: list[str], payload_hash: str) -> str:
    """The SigV4 canonical request for S3 (paths are encoded once, not normalised)."""
    path = _uri_encode(unquote(raw_path), safe="/") or "/"
    pairs = parse_qsl(raw_query, keep_blank_values=True)
    query = "&".join(
        f"{_uri_encode(k, '')}={_uri_encode(v, '')}"
        for k, v in sorted(pairs)
        if k != "X-Amz-Signature"
    )
    header_lines = "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed_headers)
    return "\n".join([method, path, query, header_lines, ";".join(signed_headers), payload_hash])


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


class AuthError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class SigV4Verifier:
    """WSGI middleware: only requests signed with ``credentials`` reach ``app``."""

    app: WSGIApp
    credentials: Credentials
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.timezone.utc))

    def verify(self, environ: dict[str, Any]) -> None:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if not auth:
            raise AuthError("AccessDenied", "Anonymous access is not allowed")
        algorithm, _, rest = auth.partition(" ")
        if algorithm != "AWS4-HMAC-SHA256":
            raise AuthError("AccessDenied", "Only AWS Signature Version 4 is accepted")
        parts = dict(p.strip().partition("=")[::2] for p in rest.split(","))
        try:
            credential, signed, signature = parts["Credential"], parts["SignedHeaders"], parts["Signature"]
            access_key, date, region, service, terminal = credential.split("/")
        except (KeyError, ValueError):
            raise AuthError("AuthorizationHeaderMalformed", "Malformed Authorization header") from None
        if not hmac.compare_digest(access_key, self.credentials.access_key) or terminal != "aws4_request":
            raise AuthError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if name in environ:
                headers[name.replace("_", "-").lower()] = environ[name]
        amz_date = headers.get("x-amz-date", "")
        try:
            when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            raise AuthError("AccessDenied", "Missing or malformed X-Amz-Date") from None
        if abs(self.now() - when) > MAX_CLOCK_SKEW or not amz_date.startswith(date):
            raise AuthError("RequestTimeTooSkewed", "The difference between the request time and the current time is too large.")
        if self.credentials.session_token and not hmac.compare_digest(
            headers.get("x-amz-security-token", ""), self.credentials.session_token
        ):
            raise AuthError("InvalidToken", "The provided token is malformed or otherwise invalid.")
        payload_hash = headers.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(environ.get("PATH_INFO", "/"))
        raw_path, _, raw_query = raw_uri.partition("?")
        canonical = canonical_request(
            environ["REQUEST_METHOD"], raw_path, raw_query, headers, signed.split(";"), payload_hash
        )
        scope = f"{date}/{region}/{service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        expected = hmac.new(
            _signing_key(self.credentials.secret_key, date, region, service), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise AuthError(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in HEALTH_PATHS and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            start_response("200 OK", [("Content-Length", "0")])
            return []
        if path.startswith("/moto-api"):
            return _error(start_response, "AccessDenied", "not available", environ)
        try:
            self.verify(environ)
        except AuthError as exc:
            return _error(start_response, exc.code, str(exc), environ)
        return self.app(environ, start_response)


def _error(start_response: Callable[..., Any], code: str, message: str, environ: dict[str, Any]) -> Iterable[bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def generate_credentials() -> Credentials:
    return Credentials(
        access_key="SANDBOX" + secrets.token_hex(8).upper(),
        secret_key=secrets.token_urlsafe(30),
    )


class EmbeddedS3Server:
    """An in-process S3 endpoint on a loopback address. ``port=0`` picks a free port."""

    def __init__(self, credentials: Credentials, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            from moto.server import create_backend_app
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the embedded S3 endpoint needs moto's server: pip install 'sandbox-host[server]'"
            ) from exc
        from werkzeug.serving import WSGIRequestHandler, make_server

        class QuietHandler(WSGIRequestHandler):
            def log_request(self, *args: object, **kwargs: object) -> None:
                pass

        app = create_backend_app("s3")
        self.credentials = credentials
        self._server = make_server(host, port, SigV4Verifier(app, credentials), threaded=True,
                                   request_handler=QuietHandler)
        self.host = host
        self.port = int(self._server.server_port)
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "EmbeddedS3Server":
        self._thread = threading.Thread(target=self._server.serve_forever, name="embedded-s3", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> "EmbeddedS3Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

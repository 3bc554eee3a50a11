"""The embedded S3 endpoint: moto's S3 implementation behind a strict AWS SigV4 check.

For development, tests and the README's main job, where MinIO is not available. Moto
accepts any credentials on its own (and its optional IAM check mis-verifies some of
s3fs's requests), so this module verifies every request before moto sees it:

* **Authentication** (:class:`SigV4Verifier`): SigV4 in the Authorization header only
  (presigned URLs are refused: nothing in the project uses them), with ``host`` and every
  ``x-amz-*`` header signed, and the payload's SHA-256 checked against the body it signs
  (``UNSIGNED-PAYLOAD`` is accepted, as S3 does: some clients upload so; aws-chunked streaming is
  refused: boto3 and s3fs send bodies whole). The body is read (bounded) and buffered before moto gets it.
* **STS AssumeRole** at ``POST /`` (service ``sts``), for the root key pair only: temporary
  credentials, kept in memory with their session policy and expiry, that need their
  ``x-amz-security-token``.
* **Authorization** of temporary credentials against their session policy, the way AWS
  evaluates it (:mod:`provisioning.devstore.policy`); refusals answer 403 AccessDenied. The root
  key pair may do everything.
* **Connection limits** (:class:`ServerLimits`, :mod:`provisioning.connlimits`): a cap on the
  connections one peer holds (a local peer is a uid: one user cannot take root's share; further
  ones get 503 SlowDown at once) and on all of them (further ones wait, then get 503 SlowDown);
  total deadlines for a request's head, its body and its answer, and a read timeout per read.

Data lives in memory: it is gone when the server stops. Production hosts run MinIO
(roles/object_store).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import io
import random
import re
import secrets
import socket
import tempfile
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote
from xml.sax.saxutils import escape

from .. import connlimits
from ..config import Credentials
from ..errors import SandboxHostError
from . import policy as s3policy

if TYPE_CHECKING:
    from werkzeug.serving import ThreadedWSGIServer  # with moto (the server extra): imported where used

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
MAX_CLOCK_SKEW = dt.timedelta(minutes=15)
# Unauthenticated liveness, at MinIO's path, so one health check serves both backends.
HEALTH_PATHS = ("/minio/health/live", "/minio/health/ready")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_BODY_BYTES = 5 * 1024**3  # S3's largest single PUT
MAX_STS_BODY_BYTES = 64 * 1024
MAX_DELETE_BODY_BYTES = 4 * 1024 * 1024
STS_VERSION = "2011-06-15"
STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
MIN_SESSION_SECONDS, MAX_SESSION_SECONDS, DEFAULT_SESSION_SECONDS = 900, 604_800, 3600
_SPOOL_IN_MEMORY = 16 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_PRESIGN_PARAMETERS = {"x-amz-signature", "x-amz-credential", "x-amz-algorithm", "x-amz-security-token",
                       "signature", "awsaccesskeyid"}
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_ROLE_SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")

_STATUS = {
    "AccessDenied": "403 Forbidden",
    "SignatureDoesNotMatch": "403 Forbidden",
    "InvalidAccessKeyId": "403 Forbidden",
    "InvalidClientTokenId": "403 Forbidden",
    "RequestTimeTooSkewed": "403 Forbidden",
    "NoSuchUpload": "404 Not Found",
    "MissingContentLength": "411 Length Required",
    "SlowDown": "503 Service Unavailable",
}  # every other code: 400 Bad Request


class NotInstalled(SandboxHostError):
    """The ``server`` extra (moto) is missing: the dev endpoint is an opt-in part."""

    kind = "not-installed"


class AuthError(Exception):
    """A refused request: ``code`` is the S3 (or STS) error code, the message names the cause."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def status(self) -> str:
        return _STATUS.get(self.code, "400 Bad Request")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- SigV4 ---------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class SignatureFields:
    """The parts of an ``AWS4-HMAC-SHA256`` Authorization header."""

    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> SignatureFields:
    algorithm, _, rest = value.partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        raise AuthError("AccessDenied", "Only AWS Signature Version 4 (AWS4-HMAC-SHA256) is accepted")
    parts = dict(p.strip().partition("=")[::2] for p in rest.split(","))
    try:
        credential, signed, signature = parts["Credential"], parts["SignedHeaders"], parts["Signature"]
        access_key, date, region, service, terminal = credential.split("/")
    except (KeyError, ValueError):
        raise AuthError("AuthorizationHeaderMalformed",
                        "Malformed Authorization header: it needs Credential=KEY/DATE/REGION/SERVICE/aws4_request, "
                        "SignedHeaders= and Signature=") from None
    if terminal != "aws4_request" or not signed:
        raise AuthError("AuthorizationHeaderMalformed", "Malformed Authorization header: bad credential scope")
    return SignatureFields(access_key, date, region, service, tuple(signed.split(";")), signature)


def _request_headers(environ: dict[str, Any]) -> dict[str, str]:
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if name in environ:
            headers[name.replace("_", "-").lower()] = environ[name]
    return headers


def _request_target(environ: dict[str, Any]) -> str:
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not target:
        query = environ.get("QUERY_STRING", "")
        target = quote(environ.get("PATH_INFO", "/")) + (f"?{query}" if query else "")
    return str(target)


# -- credentials ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Principal:
    """Whoever signed a request: the root key pair, or temporary credentials from AssumeRole."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)
    policy: s3policy.Policy | None = None
    expiration: dt.datetime | None = None
    arn: str = ""

    @property
    def temporary(self) -> bool:
        return self.expiration is not None


@dataclass(frozen=True)
class SessionRequest:
    """A checked AssumeRole request."""

    role_arn: str
    session_name: str
    duration: dt.timedelta
    policy_text: str | None
    policy: s3policy.Policy | None


class CredentialStore:
    """The root key pair and the temporary credentials issued from it, in memory."""

    def __init__(self, root: Credentials) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._temporary: dict[str, Principal] = {}

    def lookup(self, access_key: str) -> Principal | None:
        if hmac.compare_digest(access_key, self.root.access_key):
            return Principal(self.root.access_key, self.root.secret_key, self.root.session_token)
        with self._lock:
            return self._temporary.get(access_key)

    def issue(self, request: SessionRequest, now: dt.datetime) -> Principal:
        expiration = (now + request.duration).replace(microsecond=0)
        account = _arn_account(request.role_arn)
        role_name = request.role_arn.rsplit("/", 1)[-1] if "/" in request.role_arn else "role"
        principal = Principal(
            access_key="ASIA" + secrets.token_hex(8).upper(),
            secret_key=secrets.token_urlsafe(30),
            session_token=secrets.token_urlsafe(48),
            policy=request.policy,
            expiration=expiration,
            arn=f"arn:aws:sts::{account}:assumed-role/{role_name}/{request.session_name}",
        )
        with self._lock:
            for key in [k for k, p in self._temporary.items() if p.expiration and p.expiration <= now]:
                del self._temporary[key]
            self._temporary[principal.access_key] = principal
        return principal


def _arn_account(arn: str) -> str:
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 and parts[4].isdigit() else "000000000000"


class UploadRegistry:
    """Which key each multipart upload belongs to. Moto finds an upload by its id alone (the key
    in the URL is ignored), so requests that name an upload are checked against this first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uploads: dict[tuple[str, str], str] = {}

    def record(self, bucket: str, upload_id: str, key: str) -> None:
        with self._lock:
            self._uploads[(bucket, upload_id)] = key

    def key_of(self, bucket: str, upload_id: str) -> str | None:
        with self._lock:
            return self._uploads.get((bucket, upload_id))

    def forget(self, bucket: str, upload_id: str) -> None:
        with self._lock:
            self._uploads.pop((bucket, upload_id), None)


# -- bodies --------------------------------------------------------------------------------
@dataclass
class BufferedBody:
    """A request body read in full (spooled to disk past 16 MiB), with its SHA-256."""

    file: IO[bytes]
    length: int
    sha256: str

    def read_all(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        self.file.close()


def _declared_length(environ: dict[str, Any], limit: int) -> int:
    if environ.get("HTTP_TRANSFER_ENCODING"):
        raise AuthError("MissingContentLength",
                        "Transfer-Encoding is not accepted: send the body with a Content-Length header")
    text = str(environ.get("CONTENT_LENGTH") or "0").strip()
    if not text.isdigit():
        raise AuthError("InvalidArgument", f"Content-Length {text!r} is not a number of bytes")
    length = int(text)
    if length > limit:
        _stop_reading(environ)
        raise AuthError("EntityTooLarge", f"the body of {length} bytes exceeds the limit of {limit} bytes")
    return length


def _stop_reading(environ: dict[str, Any]) -> None:
    """Close the read side, so the server does not drain a body it will never use."""
    sock = environ.get("werkzeug.socket")
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)


def _excess_input(environ: dict[str, Any]) -> bool:
    """Whether bytes beyond Content-Length have already arrived (checked without waiting)."""
    stream, sock = environ.get("wsgi.input"), environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket) or not isinstance(stream, io.BufferedReader):
        return False
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        return bool(stream.peek(1))
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)


def read_body(environ: dict[str, Any], limit: int) -> BufferedBody:
    """Read exactly Content-Length bytes (at most ``limit``), hashing them as they come."""
    length = _declared_length(environ, limit)
    stream = environ.get("wsgi.input") or io.BytesIO()
    digest = hashlib.sha256()
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - owned by BufferedBody
    remaining = length
    try:
        while remaining:
            chunk = stream.read(min(_READ_CHUNK, remaining))
            if not chunk:
                raise AuthError("IncompleteBody",
                                f"You did not provide the number of bytes specified by the Content-Length HTTP header "
                                f"({length - remaining} of {length} arrived)")
            digest.update(chunk)
            spool.write(chunk)
            remaining -= len(chunk)
        if _excess_input(environ):
            raise AuthError("IncompleteBody", f"the request carries more bytes than its Content-Length ({length})")
    except TimeoutError:
        spool.close()
        raise AuthError("RequestTimeout", "Your socket connection to the server was not read from or written to "
                                          "within the timeout period.") from None
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return BufferedBody(spool, length, digest.hexdigest())


class _ClosingBody:
    """A WSGI response iterable that also closes the request body once the response is sent."""

    def __init__(self, result: Iterable[bytes], body: BufferedBody) -> None:
        self._result, self._body = result, body

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._body.close()


# -- the middleware ------------------------------------------------------------------------
@dataclass
class SigV4Verifier:
    """WSGI middleware: only requests signed with ``credentials`` (or with temporary credentials
    issued from them, within their session policy) reach ``app``."""

    app: WSGIApp
    credentials: Credentials
    now: Callable[[], dt.datetime] = field(default=_utcnow)
    max_body_bytes: int = MAX_BODY_BYTES
    # STS's floor. A test switch may lower it, so that credentials expire within a test's time.
    min_session_seconds: int = MIN_SESSION_SECONDS
    # A test switch: this share of S3 requests (0 to 1) is answered 503 SlowDown, as a throttling store does.
    slowdown: float = 0.0
    store: CredentialStore = field(init=False)
    uploads: UploadRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.store = CredentialStore(self.credentials)
        self.uploads = UploadRegistry()

    # -- authentication --------------------------------------------------------------------
    def verify(self, environ: dict[str, Any], payload_sha256: str | None = None) -> Principal:
        """Check the request's signature; return who signed it.

        S3 requests sign their payload hash in ``x-amz-content-sha256`` (checked against the
        body later, by the caller); STS requests don't, so the caller passes the body's hash.
        """
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if not auth:
            raise AuthError("AccessDenied", "Anonymous access is not allowed")
        fields = parse_authorization(auth)
        if fields.service not in ("s3", "sts"):
            raise AuthError("AuthorizationHeaderMalformed", f"this endpoint serves s3 and sts, not {fields.service!r}")
        principal = self.store.lookup(fields.access_key)
        if principal is None:
            if fields.service == "sts":
                raise AuthError("InvalidClientTokenId", "The security token included in the request is invalid.")
            raise AuthError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        headers = _request_headers(environ)
        _check_signed_headers(headers, fields.signed_headers)
        _check_token(principal, headers)
        now = self.now()
        if principal.expiration is not None and now >= principal.expiration:
            raise AuthError("ExpiredToken", "The provided token has expired.")
        amz_date = headers.get("x-amz-date", "")
        try:
            when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            raise AuthError("AccessDenied", "Missing or malformed X-Amz-Date") from None
        if abs(now - when) > MAX_CLOCK_SKEW or not amz_date.startswith(fields.date):
            raise AuthError("RequestTimeTooSkewed",
                            "The difference between the request time and the current time is too large.")
        payload_hash = _payload_hash(fields.service, headers.get("x-amz-content-sha256"), payload_sha256)
        raw_path, _, raw_query = _request_target(environ).partition("?")
        canonical = canonical_request(
            environ["REQUEST_METHOD"], raw_path, raw_query, headers, list(fields.signed_headers), payload_hash
        )
        scope = f"{fields.date}/{fields.region}/{fields.service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = _signing_key(principal.secret_key, fields.date, fields.region, fields.service)
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields.signature):
            raise AuthError(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        return principal

    # -- dispatch --------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in HEALTH_PATHS and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            start_response("200 OK", [("Content-Length", "0")])
            return []
        if path.startswith("/moto-api"):
            return _error(start_response, AuthError("AccessDenied", "not available"), environ)
        if _scope_service(environ) == "sts":
            return self._serve_sts(environ, start_response)
        try:
            return self._serve_s3(environ, start_response)
        except AuthError as exc:
            return _error(start_response, exc, environ)

    def _serve_s3(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = _request_target(environ)
        if not target.startswith("/") or "#" in target:
            raise AuthError("InvalidURI", "the request target must be a path starting with '/' and without '#'")
        query_names = {name.lower() for name, _ in parse_qsl(target.partition("?")[2], keep_blank_values=True)}
        if query_names & _PRESIGN_PARAMETERS:
            raise AuthError("AccessDenied", "presigned URLs (query-string authentication) are not accepted by this "
                                            "endpoint: sign requests with the Authorization header")
        principal = self.verify(environ)
        headers = _request_headers(environ)
        moto_headers = sorted(h for h in headers if h.startswith("x-moto-"))
        if moto_headers:
            raise AuthError("InvalidRequest", f"moto control headers are not accepted: {', '.join(moto_headers)}")
        request = s3policy.S3Request.from_target(environ["REQUEST_METHOD"], target, headers)
        if principal.policy is not None:
            self._authorize(request, principal.policy, environ)
        body = read_body(environ, self.max_body_bytes)
        try:
            claimed = headers["x-amz-content-sha256"].lower()
            if claimed != "unsigned-payload" and claimed != body.sha256:
                raise AuthError("XAmzContentSHA256Mismatch",
                                "The provided 'x-amz-content-sha256' header does not match what was computed.")
            if principal.policy is not None and s3policy.needs_body(request):
                payload = body.read_all()
                _authorize_permissions(principal.policy, lambda: s3policy.required_permissions(request, payload))
            if self.slowdown and random.random() < self.slowdown:
                raise AuthError("SlowDown", "Please reduce your request rate.")
            return self._forward(environ, request, body, start_response)
        except BaseException:
            body.close()
            raise

    def _authorize(self, request: s3policy.S3Request, policy: s3policy.Policy, environ: dict[str, Any]) -> None:
        """Everything a policy-scoped request is checked for before its body is read."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in _FORM_TYPES:
            raise AuthError("InvalidRequest", f"Content-Type {content_type} is not accepted for session credentials: "
                                              "the backend would read the body as parameters")
        if s3policy.needs_body(request):
            if _declared_length(environ, self.max_body_bytes) > MAX_DELETE_BODY_BYTES:
                raise AuthError("MalformedXML", f"a multi-object delete body is at most {MAX_DELETE_BODY_BYTES} bytes")
            return
        _authorize_permissions(policy, lambda: s3policy.required_permissions(request))
        self._check_upload_owner(request)

    def _check_upload_owner(self, request: s3policy.S3Request) -> None:
        params = dict(request.query)
        bucket, key = s3policy.split_path(request.raw_path)
        if "uploadId" in params and key and self.uploads.key_of(bucket, params["uploadId"]) != key:
            raise AuthError("NoSuchUpload", f"The specified multipart upload does not exist for {bucket}/{key}: "
                                            "the upload ID may be invalid, another key's, aborted or completed.")

    def _forward(self, environ: dict[str, Any], request: s3policy.S3Request, body: BufferedBody,
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Hand moto the verified request: the buffered body, and a Host that makes it read path-style."""
        inner = dict(environ)
        if request.method in ("GET", "HEAD", "DELETE"):
            inner["wsgi.input"], inner["CONTENT_LENGTH"] = io.BytesIO(b""), "0"
        else:
            body.file.seek(0)
            inner["wsgi.input"], inner["CONTENT_LENGTH"] = body.file, str(body.length)
        inner.pop("HTTP_TRANSFER_ENCODING", None)
        inner.pop("wsgi.input_terminated", None)
        inner["HTTP_HOST"] = "localhost:" + str(environ.get("SERVER_PORT", "80"))
        upload = _upload_operation(request)
        if upload is None:
            return _ClosingBody(self.app(inner, start_response), body)
        status: list[str] = []

        def capture(code: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status.append(code)
            return start_response(code, headers, exc_info) if exc_info else start_response(code, headers)

        result = self.app(inner, capture)
        try:
            data = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            body.close()
        if status and status[-1].startswith("2"):
            self._track_upload(upload, request, data)
        return [data]

    def _track_upload(self, operation: str, request: s3policy.S3Request, response: bytes) -> None:
        bucket, key = s3policy.split_path(request.raw_path)
        if operation == "create":
            upload_id = _xml_text(response, "UploadId")
            if upload_id:
                self.uploads.record(bucket, upload_id, key)
        else:
            self.uploads.forget(bucket, dict(request.query).get("uploadId", ""))

    # -- STS -------------------------------------------------------------------------------
    def _serve_sts(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request_id = str(uuid.uuid4())
        try:
            body = read_body(environ, MAX_STS_BODY_BYTES)
            try:
                payload = body.read_all()
            finally:
                body.close()
            principal = self.verify(environ, body.sha256)
            response = self._assume_role(environ, payload, principal, request_id)
        except AuthError as exc:
            return _sts_error(start_response, exc, request_id)
        start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(response)))])
        return [response]

    def _assume_role(self, environ: dict[str, Any], payload: bytes, principal: Principal, request_id: str) -> bytes:
        target = _request_target(environ)
        if environ["REQUEST_METHOD"] != "POST" or target != "/":
            raise AuthError("InvalidAction", "STS requests are POST / with a form body")
        content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise AuthError("ValidationError", "the STS request body must be application/x-www-form-urlencoded")
        form = _form(payload)
        action, version = form.get("Action", ""), form.get("Version", "")
        if action != "AssumeRole" or version != STS_VERSION:
            raise AuthError("InvalidAction", f"Could not find operation {action or '(none)'} for version "
                                             f"{version or '(none)'}: this endpoint serves AssumeRole, {STS_VERSION}")
        if principal.temporary:
            raise AuthError("AccessDenied",
                            "temporary credentials cannot call AssumeRole: use the endpoint's root key pair")
        issued = self.store.issue(parse_assume_role(form, self.min_session_seconds), self.now())
        return _assume_role_response(issued, form.get("Policy"), request_id)


def _scope_service(environ: dict[str, Any]) -> str:
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    match = re.search(r"Credential=[^/,]*/[^/,]*/[^/,]*/([^/,]*)/", auth)
    return match.group(1) if match else ""


def _check_signed_headers(headers: dict[str, str], signed: tuple[str, ...]) -> None:
    if "host" not in headers or "host" not in signed:
        raise AuthError("AccessDenied", "the Host header must be present and signed")
    unsigned = sorted(h for h in headers if h.startswith("x-amz-") and h not in signed)
    if unsigned:
        raise AuthError("AccessDenied", "There were headers present in the request which were not signed: "
                                        + ", ".join(unsigned))


def _check_token(principal: Principal, headers: dict[str, str]) -> None:
    token = headers.get("x-amz-security-token")
    if principal.session_token:
        if token is None:
            raise AuthError("InvalidToken", "these credentials need their session token in a signed "
                                            "x-amz-security-token header")
        if not hmac.compare_digest(token, principal.session_token):
            raise AuthError("InvalidToken", "The provided token is malformed or otherwise invalid.")
    elif token is not None:
        raise AuthError("InvalidToken", "an x-amz-security-token was sent with credentials that have none")


def _payload_hash(service: str, claimed: str | None, computed: str | None) -> str:
    """The payload hash the signature covers."""
    if service == "sts":
        if computed is None:
            raise AuthError("InvalidRequest", "an STS request is verified with its body")
        if claimed is not None and claimed.lower() != computed:
            raise AuthError("XAmzContentSHA256Mismatch",
                            "The provided 'x-amz-content-sha256' header does not match what was computed.")
        return claimed if claimed is not None else computed
    if claimed is None:
        raise AuthError("InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    if claimed == "UNSIGNED-PAYLOAD":
        return claimed  # as S3 does: the signature covers the headers, not the body (some clients upload so)
    if claimed.startswith("STREAMING-"):
        raise AuthError("InvalidRequest", f"x-amz-content-sha256: {claimed} (aws-chunked streaming) is not accepted "
                                          "by this endpoint: send the body whole and sign its SHA-256")
    if not _HEX_SHA256.fullmatch(claimed):
        raise AuthError("InvalidArgument", "x-amz-content-sha256 must be the payload's SHA-256 in hex")
    return claimed


def _authorize_permissions(policy: s3policy.Policy,
                           permissions: Callable[[], tuple[s3policy.Permission, ...]]) -> None:
    try:
        needed = permissions()
    except s3policy.RequestError as exc:
        raise AuthError(exc.code, str(exc)) from None
    denial = s3policy.authorize(policy, needed)
    if denial is not None:
        raise AuthError("AccessDenied", denial.message)


def _upload_operation(request: s3policy.S3Request) -> str | None:
    """"create", "finish" (complete or abort) or None: the multipart operations the registry follows."""
    names = {name for name, _ in request.query}
    try:
        _, key = s3policy.split_path(request.raw_path)
    except s3policy.RequestError:
        return None
    if not key:
        return None
    if request.method == "POST" and "uploads" in names:
        return "create"
    if request.method in ("POST", "DELETE") and "uploadId" in names:
        return "finish"
    return None


def _xml_text(document: bytes, tag: str) -> str:
    try:
        root = ET.fromstring(document)
    except ET.ParseError:
        return ""
    for element in root.iter():
        if element.tag == tag or element.tag.endswith("}" + tag):
            return element.text or ""
    return ""


def _form(payload: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(payload.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(payload))
    except (UnicodeDecodeError, ValueError):
        raise AuthError("ValidationError", "the request body is not a valid form") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise AuthError("ValidationError", f"parameter {name} is given more than once")
        form[name] = value
    return form


def _validation(value: str, member: str, constraint: str) -> AuthError:
    return AuthError("ValidationError", f"1 validation error detected: Value '{value}' at '{member}' failed to "
                                        f"satisfy constraint: {constraint}")


def parse_assume_role(form: dict[str, str], min_seconds: int = MIN_SESSION_SECONDS) -> SessionRequest:
    """Check AssumeRole's parameters the way STS does; raise ValidationError or MalformedPolicyDocument."""
    role_arn, session_name = form.get("RoleArn", ""), form.get("RoleSessionName", "")
    if not 20 <= len(role_arn) <= 2048 or not role_arn.startswith("arn:"):
        raise _validation(role_arn, "roleArn", "Member must be an ARN of 20 to 2048 characters")
    if not _ROLE_SESSION_NAME.fullmatch(session_name):
        raise _validation(session_name, "roleSessionName",
                          "Member must have 2 to 64 characters matching [\\w+=,.@-]*")
    raw_duration = form.get("DurationSeconds", str(DEFAULT_SESSION_SECONDS))
    if not raw_duration.isdigit():
        raise _validation(raw_duration, "durationSeconds", "Member must be a whole number of seconds")
    duration = int(raw_duration)
    if duration < min_seconds:
        raise _validation(raw_duration, "durationSeconds",
                          f"Member must have value greater than or equal to {min_seconds}")
    if duration > MAX_SESSION_SECONDS:
        raise _validation(raw_duration, "durationSeconds",
                          f"Member must have value less than or equal to {MAX_SESSION_SECONDS}")
    if any(name.startswith("PolicyArns.") for name in form):
        raise AuthError("ValidationError", "PolicyArns (managed session policies) are not supported by this endpoint: "
                                           "pass the session policy inline in Policy")
    policy_text = form.get("Policy")
    try:
        policy = s3policy.parse_policy(policy_text) if policy_text is not None else None
    except s3policy.PolicyError as exc:
        raise AuthError("MalformedPolicyDocument", f"The policy is malformed: {exc}") from None
    return SessionRequest(role_arn, session_name, dt.timedelta(seconds=duration), policy_text, policy)


def _assume_role_response(issued: Principal, policy_text: str | None, request_id: str) -> bytes:
    assert issued.expiration is not None
    role_id = "AROA" + hashlib.sha256(issued.arn.rsplit("/", 1)[0].encode()).hexdigest()[:17].upper()
    session_name = issued.arn.rsplit("/", 1)[-1]
    packed = len(policy_text) * 100 // s3policy.MAX_POLICY_CHARS if policy_text else 0
    return (
        f'<AssumeRoleResponse xmlns="{STS_NAMESPACE}">'
        "<AssumeRoleResult>"
        "<Credentials>"
        f"<AccessKeyId>{issued.access_key}</AccessKeyId>"
        f"<SecretAccessKey>{escape(issued.secret_key)}</SecretAccessKey>"
        f"<SessionToken>{escape(issued.session_token)}</SessionToken>"
        f"<Expiration>{issued.expiration.strftime('%Y-%m-%dT%H:%M:%SZ')}</Expiration>"
        "</Credentials>"
        "<AssumedRoleUser>"
        f"<AssumedRoleId>{role_id}:{escape(session_name)}</AssumedRoleId>"
        f"<Arn>{escape(issued.arn)}</Arn>"
        "</AssumedRoleUser>"
        f"<PackedPolicySize>{packed}</PackedPolicySize>"
        "</AssumeRoleResult>"
        f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
        "</AssumeRoleResponse>"
    ).encode()


def _error(start_response: Callable[..., Any], error: AuthError, environ: dict[str, Any]) -> Iterable[bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{error.code}</Code><Message>{escape(str(error))}</Message>"
        f"<RequestId>{uuid.uuid4()}</RequestId></Error>"
    ).encode()
    start_response(error.status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def _sts_error(start_response: Callable[..., Any], error: AuthError, request_id: str) -> Iterable[bytes]:
    kind = "Receiver" if error.status.startswith("5") else "Sender"
    body = (
        f'<ErrorResponse xmlns="{STS_NAMESPACE}"><Error><Type>{kind}</Type><Code>{error.code}</Code>'
        f"<Message>{escape(str(error))}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()
    start_response(error.status, [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]


def generate_credentials() -> Credentials:
    return Credentials(
        access_key="SANDBOX" + secrets.token_hex(8).upper(),
        secret_key=secrets.token_urlsafe(30),
    )


# -- the server ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerLimits:
    """How much a client may hold of the server (the mechanism: :mod:`provisioning.connlimits`).

    ``read_timeout``: the longest wait for any read from a client, and the most time a client
    may take to send a request's line and headers in total (a trickle does not reset it).
    ``max_per_peer``: connections one peer holds at once; a further one is answered 503 SlowDown
    at once. A local peer is the uid that owns its socket, not 127.0.0.1, so a local user cannot
    take the slots of root's clients (s3fs, the sync processes, the CLI). 64 is what the whole endpoint
    allowed before: no single client has fewer than it had.
    ``max_connections``: connections served at once, all peers together; each holds one thread.
    A further connection waits (in the accept loop, then the listen backlog) up to
    ``connection_wait`` seconds for a free slot, then is answered 503 SlowDown. 512 is eight
    peers at their cap, and as many threads, mostly idle, as a small host carries easily.
    ``body_timeout`` + Content-Length / ``min_rate``: the most time for a request's body, and
    the endpoint's own work on it until the answer starts (in memory: well within the base
    time). At 1 MiB/s, a rate any local client beats, a 64 KiB PUT gets 30 s and a 5 GiB one
    30 s + 85 min; a trickle cannot hold a slot past that, and a big one needs valid credentials
    (an unsigned request is answered before its body is read).
    ``answer_timeout`` + answer size / ``min_rate``: the most time to write an answer to a
    client that reads slowly.
    ``backlog``: connections the kernel queues for the accept loop (werkzeug's default is 128).
    """

    read_timeout: float = 30.0
    max_connections: int = 512
    connection_wait: float = 10.0
    max_body_bytes: int = MAX_BODY_BYTES
    max_per_peer: int = 64
    body_timeout: float = 30.0
    answer_timeout: float = 30.0
    min_rate: int = 1 << 20
    backlog: int = 1024

    def __post_init__(self) -> None:
        connlimits.require_positive(self)

    def connection_limits(self) -> connlimits.Limits:
        return connlimits.Limits(
            max_per_peer=self.max_per_peer, max_connections=self.max_connections,
            connection_wait=self.connection_wait, head=self.read_timeout, body=self.body_timeout,
            answer=self.answer_timeout, min_rate=self.min_rate, backlog=self.backlog,
        )


_BUSY_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
              b"<Message>Please reduce your request rate: too many connections are open, yours or in all."
              b"</Message></Error>")


def _answer_busy(sock: socket.socket) -> None:
    try:
        sock.settimeout(1.0)
        sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                     b"Retry-After: 1\r\nConnection: close\r\n"
                     + f"Content-Length: {len(_BUSY_BODY)}\r\n\r\n".encode() + _BUSY_BODY)
    except OSError:
        pass


def _make_server(host: str, port: int, app: WSGIApp, limits: ServerLimits) -> ThreadedWSGIServer:
    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    # GuardedServer's request_queue_size is a read-only property (socketserver only reads it).
    class Server(connlimits.GuardedServer, ThreadedWSGIServer):  # type: ignore[override]
        guard = connlimits.Guard(limits.connection_limits())  # this server's own: the class is too

        def refuse(self, request: Any) -> None:
            _answer_busy(request)

    class Handler(connlimits.GuardedHandler, WSGIRequestHandler):
        server: Server  # both bases' servers in one
        timeout = limits.read_timeout  # applied to the socket: no read waits longer

        def log_request(self, *args: object, **kwargs: object) -> None:
            pass

        def log_error(self, *args: object) -> None:
            pass  # timeouts and malformed requests: the client is told, the log is not flooded

    return Server(host, port, app, handler=Handler)


class EmbeddedS3Server:
    """An in-process S3 (and STS AssumeRole) endpoint on a loopback address. ``port=0`` picks a
    free port. ``clock`` (UTC) is what signatures and temporary credentials are checked against.
    ``min_session_seconds`` below STS's 900 is a test switch: credentials that expire in seconds."""

    def __init__(self, credentials: Credentials, host: str = "127.0.0.1", port: int = 0, *,
                 limits: ServerLimits = ServerLimits(), clock: Callable[[], dt.datetime] = _utcnow,
                 min_session_seconds: int = MIN_SESSION_SECONDS) -> None:
        try:
            from moto.server import create_backend_app
        except ImportError:
            raise NotInstalled("the embedded S3 endpoint needs moto's server, which is not installed here: "
                               "pip install 'sandbox-host[server]' (the sandbox_host role: "
                               "sandbox_host_extras: [server])") from None

        app = create_backend_app("s3")
        self.credentials = credentials
        self.limits = limits
        self.verifier = SigV4Verifier(app, credentials, now=clock, max_body_bytes=limits.max_body_bytes,
                                      min_session_seconds=min_session_seconds)
        self._server = _make_server(host, port, self.verifier, limits)
        self.host = host
        self.port = int(self._server.server_port)
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmbeddedS3Server:
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

    def __enter__(self) -> EmbeddedS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""IAM-style authorization for the embedded S3 endpoint (pure functions, no I/O).

Two halves:

* **What a request needs**: :func:`required_permissions` maps an S3 request (method, path,
  query, headers, and for a multi-object delete its XML body) to the IAM actions and resource
  ARNs it needs, with the condition keys AWS documents for them (``s3:prefix``,
  ``s3:delimiter``, ``s3:max-keys``, ...). The mapping follows what the backend behind the
  endpoint (moto) actually does with the request, not only what AWS documents: a
  sub-resource moto does not implement for a method would be answered as another operation
  (``DELETE /bucket?analytics`` deletes the bucket), so such requests raise
  :class:`RequestError` and are refused for policy-scoped credentials.
* **Whether a policy grants it**: :func:`parse_policy` turns a session policy (JSON text) into
  a :class:`Policy`; :func:`authorize` evaluates it like IAM: an explicit Deny wins, then any
  Allow, else the request is implicitly denied. Supported: ``Action``/``NotAction``,
  ``Resource``/``NotResource`` with ``*`` and ``?`` wildcards, and ``Condition`` with the
  String*, Numeric*, Bool and Null operators and their ``IfExists`` forms. A condition
  operator the evaluator does not implement (Date*, IpAddress, ForAnyValue:..., ...) fails
  closed: an Allow statement carrying it does not apply, a Deny statement carrying it does.
"""

from __future__ import annotations

import enum
import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlparse
from xml.parsers import expat

MAX_POLICY_CHARS = 2048
MAX_DELETE_OBJECTS = 1000
S3_ARN_PREFIX = "arn:aws:s3:::"
# The resource of requests that name no bucket (ListAllMyBuckets): matched by "*" and by
# "arn:aws:s3:::*", as on AWS, but by no bucket's own ARN.
ALL_BUCKETS_ARN = S3_ARN_PREFIX + "*"
POLICY_VERSIONS = ("2012-10-17", "2008-10-17")

# Query parameters that select nothing by themselves: listing options, response overrides,
# part numbers. Every other query parameter is a sub-resource and decides the operation.
PLAIN_PARAMETERS = frozenset({
    "prefix", "delimiter", "marker", "max-keys", "list-type", "continuation-token", "start-after",
    "fetch-owner", "encoding-type", "key-marker", "version-id-marker", "upload-id-marker",
    "max-uploads", "max-parts", "part-number-marker", "partNumber", "versionId", "x-id", "id",
    "max-buckets", "bucket-region", "select-type", "response-content-type",
    "response-content-language", "response-expires", "response-cache-control",
    "response-content-disposition", "response-content-encoding",
})

# Bucket sub-resources moto implements, per method, and the IAM action each needs.
_BUCKET_SUBRESOURCES: Mapping[str, Mapping[str, str]] = {
    "GET": {
        "object-lock": "GetBucketObjectLockConfiguration",
        "uploads": "ListBucketMultipartUploads",
        "location": "GetBucketLocation",
        "lifecycle": "GetLifecycleConfiguration",
        "versioning": "GetBucketVersioning",
        "policyStatus": "GetBucketPolicyStatus",
        "policy": "GetBucketPolicy",
        "website": "GetBucketWebsite",
        "acl": "GetBucketAcl",
        "tagging": "GetBucketTagging",
        "logging": "GetBucketLogging",
        "cors": "GetBucketCORS",
        "notification": "GetBucketNotification",
        "accelerate": "GetAccelerateConfiguration",
        "publicAccessBlock": "GetBucketPublicAccessBlock",
        "inventory": "GetInventoryConfiguration",
        "versions": "ListBucketVersions",
        "encryption": "GetEncryptionConfiguration",
        "replication": "GetReplicationConfiguration",
        "ownershipControls": "GetBucketOwnershipControls",
    },
    "PUT": {
        "object-lock": "PutBucketObjectLockConfiguration",
        "versioning": "PutBucketVersioning",
        "lifecycle": "PutLifecycleConfiguration",
        "policy": "PutBucketPolicy",
        "acl": "PutBucketAcl",
        "tagging": "PutBucketTagging",
        "website": "PutBucketWebsite",
        "cors": "PutBucketCORS",
        "logging": "PutBucketLogging",
        "notification": "PutBucketNotification",
        "accelerate": "PutAccelerateConfiguration",
        "publicAccessBlock": "PutBucketPublicAccessBlock",
        "encryption": "PutEncryptionConfiguration",
        "replication": "PutReplicationConfiguration",
        "ownershipControls": "PutBucketOwnershipControls",
        "inventory": "PutInventoryConfiguration",
    },
    # AWS authorizes most bucket-configuration deletes with the matching Put* action.
    "DELETE": {
        "policy": "DeleteBucketPolicy",
        "tagging": "PutBucketTagging",
        "website": "DeleteBucketWebsite",
        "cors": "PutBucketCORS",
        "lifecycle": "PutLifecycleConfiguration",
        "publicAccessBlock": "PutBucketPublicAccessBlock",
        "encryption": "PutEncryptionConfiguration",
        "replication": "PutReplicationConfiguration",
        "ownershipControls": "PutBucketOwnershipControls",
    },
}
_LISTINGS = frozenset({"ListBucket", "ListBucketVersions"})

# Object sub-resources moto implements, per method: (action, action when a versionId is given).
_OBJECT_SUBRESOURCES: Mapping[str, Mapping[str, tuple[str, str]]] = {
    "GET": {
        "uploadId": ("ListMultipartUploadParts", "ListMultipartUploadParts"),
        "acl": ("GetObjectAcl", "GetObjectVersionAcl"),
        "tagging": ("GetObjectTagging", "GetObjectVersionTagging"),
        "legal-hold": ("GetObjectLegalHold", "GetObjectLegalHold"),
        "attributes": ("GetObjectAttributes", "GetObjectVersionAttributes"),
    },
    "PUT": {
        "uploadId": ("PutObject", "PutObject"),
        "retention": ("PutObjectRetention", "PutObjectRetention"),
        "legal-hold": ("PutObjectLegalHold", "PutObjectLegalHold"),
        "acl": ("PutObjectAcl", "PutObjectVersionAcl"),
        "tagging": ("PutObjectTagging", "PutObjectVersionTagging"),
    },
    "POST": {
        "uploads": ("PutObject", "PutObject"),
        "uploadId": ("PutObject", "PutObject"),
        "restore": ("RestoreObject", "RestoreObject"),
        "select": ("GetObject", "GetObject"),
    },
    "DELETE": {
        "uploadId": ("AbortMultipartUpload", "AbortMultipartUpload"),
        "tagging": ("DeleteObjectTagging", "DeleteObjectVersionTagging"),
    },
}
_OBJECT_DEFAULTS: Mapping[str, tuple[str, str]] = {
    "GET": ("GetObject", "GetObjectVersion"),
    "HEAD": ("GetObject", "GetObjectVersion"),
    "PUT": ("PutObject", "PutObject"),
    "DELETE": ("DeleteObject", "DeleteObjectVersion"),
}
# Operations that create an object also need these actions when the request sets what they guard.
_WRITE_EXTRAS: tuple[tuple[str, str], ...] = (
    ("x-amz-acl", "PutObjectAcl"),
    ("x-amz-grant-full-control", "PutObjectAcl"),
    ("x-amz-grant-read", "PutObjectAcl"),
    ("x-amz-grant-read-acp", "PutObjectAcl"),
    ("x-amz-grant-write-acp", "PutObjectAcl"),
    ("x-amz-tagging", "PutObjectTagging"),
    ("x-amz-object-lock-mode", "PutObjectRetention"),
    ("x-amz-object-lock-retain-until-date", "PutObjectRetention"),
    ("x-amz-object-lock-legal-hold", "PutObjectLegalHold"),
)
_BYPASS_HEADER = "x-amz-bypass-governance-retention"
# Request headers offered to conditions as s3:<header> keys.
_HEADER_CONDITION_KEYS = (
    "x-amz-acl", "x-amz-copy-source", "x-amz-metadata-directive", "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id", "x-amz-storage-class", "x-amz-content-sha256",
    "x-amz-grant-full-control", "x-amz-grant-read", "x-amz-grant-read-acp", "x-amz-grant-write",
    "x-amz-grant-write-acp", "x-amz-object-lock-mode", "x-amz-object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold",
)
_BUCKET_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")


class PolicyError(ValueError):
    """The policy document is unusable (STS answers MalformedPolicyDocument)."""


class RequestError(ValueError):
    """The request cannot be authorized as sent; ``code`` is the S3 error code to answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- requests ------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Request:
    """What authorization looks at: ``raw_path`` as sent (percent-encoded), the decoded query
    pairs in order, and the headers with lower-case names."""

    method: str
    raw_path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_target(cls, method: str, target: str, headers: Mapping[str, str]) -> S3Request:
        """Build from the HTTP request target (``/bucket/key?query``)."""
        raw_path, _, raw_query = target.partition("?")
        return cls(method.upper(), raw_path, tuple(parse_qsl(raw_query, keep_blank_values=True)),
                   {k.lower(): v for k, v in headers.items()})


@dataclass(frozen=True)
class Permission:
    """One grant a request needs: ``action`` on ``resource``, with the request's condition keys."""

    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)


def object_arn(bucket: str, key: str) -> str:
    return f"{S3_ARN_PREFIX}{bucket}/{key}"


def bucket_arn(bucket: str) -> str:
    return f"{S3_ARN_PREFIX}{bucket}"


def split_path(raw_path: str) -> tuple[str, str]:
    """``(bucket, key)`` of a path-style request, read the way moto reads it.

    The bucket is the first segment as sent (so it must not be percent-encoded), the key is the
    rest, percent-decoded once. Paths moto would read inconsistently are refused.
    """
    if not raw_path.startswith("/") or raw_path.startswith("//"):
        raise RequestError("InvalidURI", f"the request path {raw_path!r} must start with exactly one '/'")
    if "#" in raw_path:
        raise RequestError("InvalidURI", "the request path must not contain '#'")
    bucket, _, raw_key = raw_path[1:].partition("/")
    if bucket and not _BUCKET_NAME.fullmatch(bucket):
        raise RequestError("InvalidBucketName", f"{bucket!r} is not a bucket name (letters, digits, '.', '-', '_')")
    return bucket, unquote(raw_key)


def parse_copy_source(value: str) -> tuple[str, str, str | None]:
    """``(bucket, key, version_id)`` of an ``x-amz-copy-source`` header, read the way moto reads it."""
    parsed = urlparse(value)
    if parsed.scheme or parsed.netloc or parsed.params or parsed.fragment:
        raise RequestError("InvalidArgument", f"x-amz-copy-source {value!r} must be BUCKET/KEY[?versionId=ID]")
    bucket, sep, key = unquote(parsed.path).lstrip("/").partition("/")
    if not sep or not key or not _BUCKET_NAME.fullmatch(bucket):
        raise RequestError("InvalidArgument", f"x-amz-copy-source {value!r} must be BUCKET/KEY[?versionId=ID]")
    query = dict(parse_qsl(parsed.query, keep_blank_values=True))
    if set(query) - {"versionId"}:
        raise RequestError("InvalidArgument", f"x-amz-copy-source {value!r} may only carry versionId")
    return bucket, key, query.get("versionId")


def _unsupported(what: str) -> RequestError:
    """An operation this module does not map (or that moto would answer as another one)."""
    return RequestError("AccessDenied", f"{what} is not supported for session credentials by this endpoint")


def _parameters(request: S3Request) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in request.query:
        if name in params:
            raise RequestError("InvalidArgument", f"query parameter {name!r} is given more than once")
        params[name] = value
    return params


def _subresource(params: Mapping[str, str]) -> str | None:
    found = [name for name in params if name not in PLAIN_PARAMETERS]
    if len(found) > 1:
        raise RequestError("InvalidRequest", f"conflicting sub-resources in one request: {', '.join(found)}")
    return found[0] if found else None


def _base_context(request: S3Request, params: Mapping[str, str]) -> dict[str, str]:
    context = {
        "aws:securetransport": "false",
        "s3:signatureversion": "AWS4-HMAC-SHA256",
        "s3:authtype": "REST-HEADER",
    }
    for header in _HEADER_CONDITION_KEYS:
        if header in request.headers:
            context["s3:" + header] = request.headers[header]
    if "versionId" in params:
        context["s3:versionid"] = params["versionId"]
    return context


def needs_body(request: S3Request) -> bool:
    """Whether :func:`required_permissions` needs the body: a multi-object delete (POST ?delete)."""
    try:
        bucket, key = split_path(request.raw_path)
    except RequestError:
        return False
    return request.method == "POST" and bool(bucket) and not key and any(n == "delete" for n, _ in request.query)


def required_permissions(request: S3Request, body: bytes = b"") -> tuple[Permission, ...]:
    """Every permission ``request`` needs; all of them must be granted.

    ``body`` matters only where :func:`needs_body` says so. Raises :class:`RequestError` for a
    request that cannot be mapped (malformed, or an operation this endpoint does not authorize).
    """
    bucket, key = split_path(request.raw_path)
    params = _parameters(request)
    subresource = _subresource(params)
    context = _base_context(request, params)
    if not bucket:
        if subresource is not None:
            raise _unsupported(f"?{subresource} on the service endpoint")
        return (Permission("s3:ListAllMyBuckets", ALL_BUCKETS_ARN, context),)
    if not key:
        return _bucket_permissions(request, bucket, params, subresource, body, context)
    return _object_permissions(request, bucket, key, params, subresource, context)


def _listing_context(params: Mapping[str, str], context: dict[str, str]) -> dict[str, str]:
    listed = dict(context, **{"s3:prefix": params.get("prefix", "")})
    for name in ("delimiter", "max-keys"):
        if name in params:
            listed["s3:" + name] = params[name]
    return listed


def _bucket_permissions(request: S3Request, bucket: str, params: Mapping[str, str], subresource: str | None,
                        body: bytes, context: dict[str, str]) -> tuple[Permission, ...]:
    method, arn = request.method, bucket_arn(bucket)
    if subresource is None:
        simple = {"GET": "ListBucket", "HEAD": "ListBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}
        if method not in simple:
            raise _unsupported(f"{method} on a bucket without a sub-resource")
        action = simple[method]
        listed = _listing_context(params, context) if action in _LISTINGS else context
        needed = [Permission("s3:" + action, arn, listed)]
        if action == "CreateBucket" and any(h.startswith("x-amz-grant-") or h == "x-amz-acl" for h in request.headers):
            needed.append(Permission("s3:PutBucketAcl", arn, context))
        if action == "CreateBucket" and "x-amz-bucket-object-lock-enabled" in request.headers:
            needed.append(Permission("s3:PutBucketObjectLockConfiguration", arn, context))
        return tuple(needed)
    if method == "POST" and subresource == "delete":
        bypass = _BYPASS_HEADER in request.headers
        needed = []
        for key, version in parse_delete_body(body):
            needed.append(_delete_permission(bucket, key, version, context))
            if bypass:
                needed.append(Permission("s3:BypassGovernanceRetention", object_arn(bucket, key), context))
        return tuple(needed)
    configured = _BUCKET_SUBRESOURCES.get(method, {}).get(subresource)
    if configured is None:
        raise _unsupported(f"{method} /{bucket}?{subresource}")
    listing = configured in _LISTINGS
    return (Permission("s3:" + configured, arn, _listing_context(params, context) if listing else context),)


def _delete_permission(bucket: str, key: str, version: str | None, context: Mapping[str, str]) -> Permission:
    if version is None:
        return Permission("s3:DeleteObject", object_arn(bucket, key), context)
    return Permission("s3:DeleteObjectVersion", object_arn(bucket, key), dict(context, **{"s3:versionid": version}))


def _object_permissions(request: S3Request, bucket: str, key: str, params: Mapping[str, str],
                        subresource: str | None, context: dict[str, str]) -> tuple[Permission, ...]:
    method, arn = request.method, object_arn(bucket, key)
    versioned = 1 if "versionId" in params else 0
    if subresource is None:
        if method not in _OBJECT_DEFAULTS:
            raise _unsupported(f"{method} on an object without a sub-resource")
        action = _OBJECT_DEFAULTS[method][versioned]
    else:
        actions = _OBJECT_SUBRESOURCES.get(method, {}).get(subresource)
        if actions is None:
            raise _unsupported(f"{method} on an object with ?{subresource}")
        action = actions[versioned]
    if subresource == "uploadId":
        _check_upload_parameters(method, params)
    needed = [Permission("s3:" + action, arn, context)]
    creates = (method, subresource) in (("PUT", None), ("POST", "uploads"))
    if creates:
        needed += [Permission("s3:" + extra, arn, context)
                   for extra in dict.fromkeys(a for h, a in _WRITE_EXTRAS if h in request.headers)]
    if method in ("DELETE", "PUT") and subresource in (None, "retention") and _BYPASS_HEADER in request.headers:
        needed.append(Permission("s3:BypassGovernanceRetention", arn, context))
    if method == "PUT" and subresource in (None, "uploadId") and "x-amz-copy-source" in request.headers:
        src_bucket, src_key, src_version = parse_copy_source(request.headers["x-amz-copy-source"])
        read = "s3:GetObjectVersion" if src_version is not None else "s3:GetObject"
        needed.append(Permission(read, object_arn(src_bucket, src_key), context))
    return tuple(needed)


def _check_upload_parameters(method: str, params: Mapping[str, str]) -> None:
    if not params["uploadId"]:
        raise RequestError("InvalidArgument", "uploadId must not be empty")
    if method == "PUT" and not params.get("partNumber", "").isdigit():
        raise RequestError("InvalidArgument", "a part upload needs partNumber=N with uploadId")


# -- multi-object delete -------------------------------------------------------------------
@dataclass
class _Element:
    name: str
    attributes: dict[str, str]
    children: list[_Element] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


def _parse_xml(body: bytes) -> _Element:
    """A minimal tree with the element names as written (no namespace processing), as moto's
    xmltodict sees them. Document types (and so entity declarations) are refused."""
    stack: list[_Element] = []
    roots: list[_Element] = []

    def start(name: str, attributes: dict[str, str]) -> None:
        element = _Element(name, dict(attributes))
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def end(_name: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text.append(data)

    def doctype(*_args: object) -> None:
        raise RequestError("MalformedXML", "the XML must not have a document type declaration")

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise RequestError("MalformedXML", f"the XML is not well-formed: {exc}") from None
    return roots[0]


def _leaf_text(element: _Element, what: str) -> str:
    if element.children or element.attributes:
        raise RequestError("MalformedXML", f"{what} must hold only text")
    return "".join(element.text)


def parse_delete_body(body: bytes) -> tuple[tuple[str, str | None], ...]:
    """``(key, version_id)`` of each object a ``POST ?delete`` body names.

    Strict on purpose: anything moto's reader could take differently (prefixed or foreign
    elements, attributes, mixed content, duplicates) is refused as MalformedXML.
    """
    root = _parse_xml(body)
    if root.name != "Delete" or set(root.attributes) - {"xmlns"}:
        raise RequestError("MalformedXML", "the body must be a <Delete> element")
    if "".join(root.text).strip():
        raise RequestError("MalformedXML", "<Delete> must not hold text")
    targets: list[tuple[str, str | None]] = []
    quiet = 0
    for child in root.children:
        if child.name == "Quiet":
            quiet += 1
            _leaf_text(child, "<Quiet>")
        elif child.name == "Object":
            targets.append(_delete_target(child))
        else:
            raise RequestError("MalformedXML", f"<Delete> must hold only <Object> and <Quiet>, not <{child.name}>")
    if not targets or len(targets) > MAX_DELETE_OBJECTS or quiet > 1:
        raise RequestError("MalformedXML",
                           f"<Delete> must name 1 to {MAX_DELETE_OBJECTS} objects and hold at most one <Quiet>")
    return tuple(targets)


def _delete_target(element: _Element) -> tuple[str, str | None]:
    if element.attributes or "".join(element.text).strip():
        raise RequestError("MalformedXML", "<Object> must hold only elements")
    fields: dict[str, str] = {}
    for child in element.children:
        if child.name not in ("Key", "VersionId", "ETag", "LastModifiedTime", "Size") or child.name in fields:
            raise RequestError("MalformedXML", f"<Object> has an unexpected or repeated <{child.name}>")
        fields[child.name] = _leaf_text(child, f"<{child.name}>")
    if not fields.get("Key"):
        raise RequestError("MalformedXML", "every <Object> needs a non-empty <Key>")
    return fields["Key"], fields.get("VersionId")


# -- policies ------------------------------------------------------------------------------
class Effect(enum.Enum):
    ALLOW = "Allow"
    DENY = "Deny"


_STRING_OPERATORS = {"StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase",
                     "StringLike", "StringNotLike"}
_NUMERIC_OPERATORS = {"NumericEquals", "NumericNotEquals", "NumericLessThan", "NumericLessThanEquals",
                      "NumericGreaterThan", "NumericGreaterThanEquals"}
_SUPPORTED_OPERATORS = _STRING_OPERATORS | _NUMERIC_OPERATORS | {"Bool", "Null"}


@dataclass(frozen=True)
class Condition:
    """One ``operator: {key: values}`` test. ``operator`` is the base name (no ``IfExists``);
    ``supported`` is False for operators the evaluator does not implement."""

    operator: str
    key: str
    values: tuple[str, ...]
    if_exists: bool = False
    supported: bool = True
    patterns: tuple[re.Pattern[str], ...] = ()

    def holds(self, context: Mapping[str, str]) -> bool | None:
        """True or False, or None when the operator is not supported (the caller fails closed)."""
        if not self.supported:
            return None
        value = context.get(self.key)
        if self.operator == "Null":
            return (value is None) == (self.values[0] == "true")
        if value is None:
            # Absent key: IfExists forms hold; so do negated operators, as on AWS.
            return self.if_exists or "Not" in self.operator
        return self._matches(value)

    def _matches(self, value: str) -> bool:
        op = self.operator
        if op in ("StringEquals", "StringNotEquals"):
            hit = value in self.values
        elif op in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
            hit = value.casefold() in {v.casefold() for v in self.values}
        elif op in ("StringLike", "StringNotLike"):
            hit = any(p.fullmatch(value) for p in self.patterns)
        elif op == "Bool":
            hit = value.lower() in {v.lower() for v in self.values}
        else:
            hit = _numeric_match(op, value, self.values)
        return not hit if "Not" in op else hit


_NUMERIC_COMPARISONS: Mapping[str, Callable[[float, float], bool]] = {
    "NumericEquals": operator.eq, "NumericNotEquals": operator.eq,  # negated by the caller
    "NumericLessThan": operator.lt, "NumericLessThanEquals": operator.le,
    "NumericGreaterThan": operator.gt, "NumericGreaterThanEquals": operator.ge,
}


def _numeric_match(name: str, value: str, values: Sequence[str]) -> bool:
    try:
        number = float(value)
    except ValueError:
        return False
    compare = _NUMERIC_COMPARISONS[name]
    return any(compare(number, float(v)) for v in values)


@dataclass(frozen=True)
class Statement:
    effect: Effect
    actions: tuple[re.Pattern[str], ...]
    not_action: bool
    resources: tuple[re.Pattern[str], ...]
    not_resource: bool
    conditions: tuple[Condition, ...] = ()
    sid: str = ""

    def covers(self, action: str, resource: str) -> bool:
        action_hit = any(p.fullmatch(action) for p in self.actions)
        resource_hit = any(p.fullmatch(resource) for p in self.resources)
        return action_hit != self.not_action and resource_hit != self.not_resource

    def conditions_hold(self, context: Mapping[str, str]) -> bool | None:
        """All conditions' conjunction: False if any is False, else None if any is unsupported."""
        results = [c.holds(context) for c in self.conditions]
        if False in results:
            return False
        return None if None in results else True


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]


class Decision(enum.Enum):
    ALLOW = "allow"
    IMPLICIT_DENY = "implicit deny"
    EXPLICIT_DENY = "explicit deny"


def glob_pattern(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """An IAM wildcard pattern (``*`` any run of characters, ``?`` one character) as a regex."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _strings(value: object, what: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise PolicyError(f"{what} must be a non-empty string or a non-empty list of non-empty strings")
    return tuple(str(v) for v in items)


def _condition_values(value: object, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, bool):
            out.append("true" if item else "false")
        elif isinstance(item, (str, int, float)):
            out.append(str(item))
        else:
            raise PolicyError(f"condition {where} must have string, number or boolean values")
    if not out:
        raise PolicyError(f"condition {where} has no values")
    return tuple(out)


def _parse_condition_block(block: object) -> tuple[Condition, ...]:
    if not isinstance(block, dict):
        raise PolicyError("Condition must be an object of operator: {key: values}")
    conditions: list[Condition] = []
    for operator_name, tests in block.items():
        if not isinstance(tests, dict) or not tests:
            raise PolicyError(f"condition operator {operator_name} must map keys to values")
        base = operator_name.removesuffix("IfExists")
        if_exists = base != operator_name
        supported = base in _SUPPORTED_OPERATORS and not (base == "Null" and if_exists)
        for key, raw in tests.items():
            values = _condition_values(raw, f"{operator_name}/{key}")
            _check_condition_values(base, key, values, supported)
            patterns = tuple(glob_pattern(v) for v in values) if base in ("StringLike", "StringNotLike") else ()
            conditions.append(Condition(base, str(key).lower(), values, if_exists, supported, patterns))
    return tuple(conditions)


def _check_condition_values(operator: str, key: str, values: tuple[str, ...], supported: bool) -> None:
    if any("${" in v for v in values):
        raise PolicyError(f"condition {operator}/{key}: policy variables (${{...}}) are not supported")
    if not supported:
        return
    if operator == "Null" and (len(values) != 1 or values[0] not in ("true", "false")):
        raise PolicyError(f"condition Null/{key} takes \"true\" or \"false\"")
    if operator in _NUMERIC_OPERATORS:
        try:
            [float(v) for v in values]
        except ValueError:
            raise PolicyError(f"condition {operator}/{key} needs numbers") from None


_STATEMENT_KEYS = {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"}


def _parse_statement(raw: object, index: int) -> Statement:
    where = f"statement {index + 1}"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be an object")
    if "Principal" in raw or "NotPrincipal" in raw:
        raise PolicyError(f"{where}: a session policy must not name a Principal")
    unknown = set(raw) - _STATEMENT_KEYS
    if unknown:
        raise PolicyError(f"{where} has unknown elements: {', '.join(sorted(unknown))}")
    if raw.get("Effect") not in ("Allow", "Deny"):
        raise PolicyError(f"{where}: Effect must be \"Allow\" or \"Deny\"")
    if ("Action" in raw) == ("NotAction" in raw):
        raise PolicyError(f"{where} needs exactly one of Action and NotAction")
    if ("Resource" in raw) == ("NotResource" in raw):
        raise PolicyError(f"{where} needs exactly one of Resource and NotResource")
    action_key = "Action" if "Action" in raw else "NotAction"
    resource_key = "Resource" if "Resource" in raw else "NotResource"
    actions = _strings(raw[action_key], f"{where}: {action_key}")
    for action in actions:
        if action != "*" and ":" not in action:
            raise PolicyError(f"{where}: action {action!r} must be SERVICE:NAME or *")
    resources = _strings(raw[resource_key], f"{where}: {resource_key}")
    for resource in resources:
        if resource != "*" and not resource.startswith("arn:"):
            raise PolicyError(f"{where}: resource {resource!r} must be an ARN or *")
        if "${" in resource:
            raise PolicyError(f"{where}: policy variables (${{...}}) are not supported in {resource!r}")
    sid = raw.get("Sid", "")
    return Statement(
        effect=Effect(raw["Effect"]),
        actions=tuple(glob_pattern(a, ignore_case=True) for a in actions),
        not_action=action_key == "NotAction",
        resources=tuple(glob_pattern(r) for r in resources),
        not_resource=resource_key == "NotResource",
        conditions=_parse_condition_block(raw["Condition"]) if "Condition" in raw else (),
        sid=sid if isinstance(sid, str) else "",
    )


def parse_policy(text: str, max_chars: int = MAX_POLICY_CHARS) -> Policy:
    """Parse and check a session policy. Raises :class:`PolicyError` naming what is wrong."""
    if len(text) > max_chars:
        raise PolicyError(f"the policy has {len(text)} characters; at most {max_chars} are allowed")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"the policy is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PolicyError("the policy must be a JSON object")
    unknown = set(document) - {"Version", "Id", "Statement"}
    if unknown:
        raise PolicyError(f"the policy has unknown elements: {', '.join(sorted(unknown))}")
    if document.get("Version", POLICY_VERSIONS[1]) not in POLICY_VERSIONS:
        raise PolicyError(f"the policy Version must be one of {', '.join(POLICY_VERSIONS)}")
    if "Statement" not in document:
        raise PolicyError("the policy has no Statement")
    raw = document["Statement"]
    statements = raw if isinstance(raw, list) else [raw]
    return Policy(tuple(_parse_statement(s, i) for i, s in enumerate(statements)))


def decide(policy: Policy, permission: Permission) -> Decision:
    """IAM evaluation of one permission: explicit Deny wins, then any Allow, else implicit deny."""
    allowed = False
    for statement in policy.statements:
        if not statement.covers(permission.action, permission.resource):
            continue
        holds = statement.conditions_hold(permission.context)
        if statement.effect is Effect.DENY and holds is not False:
            return Decision.EXPLICIT_DENY
        if statement.effect is Effect.ALLOW and holds is True:
            allowed = True
    return Decision.ALLOW if allowed else Decision.IMPLICIT_DENY


@dataclass(frozen=True)
class Denial:
    permission: Permission
    decision: Literal[Decision.IMPLICIT_DENY, Decision.EXPLICIT_DENY]

    @property
    def message(self) -> str:
        why = ("an explicit Deny in the session policy refuses it" if self.decision is Decision.EXPLICIT_DENY
               else f"no statement of the session policy allows {self.permission.action} there")
        return (f"Access Denied: not authorized to perform {self.permission.action} on resource "
                f"{self.permission.resource}: {why}")


def authorize(policy: Policy | None, permissions: Iterable[Permission]) -> Denial | None:
    """The first permission ``policy`` refuses, or None when all are granted.

    ``policy=None`` stands for credentials without a session policy: everything is allowed.
    """
    if policy is None:
        return None
    for permission in permissions:
        decision = decide(policy, permission)
        if decision is Decision.EXPLICIT_DENY or decision is Decision.IMPLICIT_DENY:
            return Denial(permission, decision)
    return None

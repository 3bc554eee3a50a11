"""Authorization for the embedded S3 endpoint: request → IAM permissions, and policy evaluation."""

from __future__ import annotations

import json

import pytest

from provisioning.credentials import policy_json, session_policy
from provisioning.validation import session_id
from provisioning.devstore.policy import (
    ALL_BUCKETS_ARN,
    Decision,
    Permission,
    PolicyError,
    RequestError,
    S3Request,
    authorize,
    decide,
    glob_pattern,
    needs_body,
    parse_copy_source,
    parse_delete_body,
    parse_policy,
    required_permissions,
    split_path,
)

BUCKET = "sandbox-sessions"


def example_policy(session: str = "A", bucket: str = BUCKET) -> str:
    """The session policy the runtime sends with AssumeRole (compact JSON)."""
    return policy_json(session_policy(bucket, session_id(session)))


def req(method: str, target: str, **headers: str) -> S3Request:
    return S3Request.from_target(method, target, {k.replace("_", "-"): v for k, v in headers.items()})


def needs(method: str, target: str, body: bytes = b"", **headers: str) -> list[tuple[str, str]]:
    return [(p.action, p.resource) for p in required_permissions(req(method, target, **headers), body)]


def obj(key: str, bucket: str = BUCKET) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


BKT = f"arn:aws:s3:::{BUCKET}"


# -- request → permissions -----------------------------------------------------------------
@pytest.mark.parametrize(("method", "target", "expected"), [
    ("GET", "/b/k", [("s3:GetObject", "arn:aws:s3:::b/k")]),
    ("HEAD", "/b/k", [("s3:GetObject", "arn:aws:s3:::b/k")]),
    ("GET", "/b/k?versionId=3", [("s3:GetObjectVersion", "arn:aws:s3:::b/k")]),
    ("GET", "/b/k?partNumber=2&response-content-type=text/plain&x-id=GetObject",
     [("s3:GetObject", "arn:aws:s3:::b/k")]),
    ("PUT", "/b/k", [("s3:PutObject", "arn:aws:s3:::b/k")]),
    ("POST", "/b/k?uploads", [("s3:PutObject", "arn:aws:s3:::b/k")]),
    ("PUT", "/b/k?partNumber=1&uploadId=U", [("s3:PutObject", "arn:aws:s3:::b/k")]),
    ("POST", "/b/k?uploadId=U", [("s3:PutObject", "arn:aws:s3:::b/k")]),
    ("DELETE", "/b/k", [("s3:DeleteObject", "arn:aws:s3:::b/k")]),
    ("DELETE", "/b/k?versionId=v", [("s3:DeleteObjectVersion", "arn:aws:s3:::b/k")]),
    ("DELETE", "/b/k?uploadId=U", [("s3:AbortMultipartUpload", "arn:aws:s3:::b/k")]),
    ("GET", "/b/k?uploadId=U&max-parts=5", [("s3:ListMultipartUploadParts", "arn:aws:s3:::b/k")]),
    ("GET", "/b/k?acl", [("s3:GetObjectAcl", "arn:aws:s3:::b/k")]),
    ("GET", "/b/k?acl&versionId=1", [("s3:GetObjectVersionAcl", "arn:aws:s3:::b/k")]),
    ("PUT", "/b/k?acl", [("s3:PutObjectAcl", "arn:aws:s3:::b/k")]),
    ("GET", "/b/k?tagging", [("s3:GetObjectTagging", "arn:aws:s3:::b/k")]),
    ("PUT", "/b/k?tagging", [("s3:PutObjectTagging", "arn:aws:s3:::b/k")]),
    ("DELETE", "/b/k?tagging", [("s3:DeleteObjectTagging", "arn:aws:s3:::b/k")]),
    ("PUT", "/b/k?retention", [("s3:PutObjectRetention", "arn:aws:s3:::b/k")]),
    ("GET", "/b/k?legal-hold", [("s3:GetObjectLegalHold", "arn:aws:s3:::b/k")]),
    ("GET", "/b/k?attributes", [("s3:GetObjectAttributes", "arn:aws:s3:::b/k")]),
    ("POST", "/b/k?restore", [("s3:RestoreObject", "arn:aws:s3:::b/k")]),
    ("POST", "/b/k?select&select-type=2", [("s3:GetObject", "arn:aws:s3:::b/k")]),
    ("GET", "/b", [("s3:ListBucket", "arn:aws:s3:::b")]),
    ("GET", "/b/", [("s3:ListBucket", "arn:aws:s3:::b")]),
    ("GET", "/b?list-type=2&prefix=p/&continuation-token=t&start-after=a&fetch-owner=true&encoding-type=url",
     [("s3:ListBucket", "arn:aws:s3:::b")]),
    ("HEAD", "/b", [("s3:ListBucket", "arn:aws:s3:::b")]),
    ("GET", "/b?versions", [("s3:ListBucketVersions", "arn:aws:s3:::b")]),
    ("GET", "/b?uploads", [("s3:ListBucketMultipartUploads", "arn:aws:s3:::b")]),
    ("GET", "/b?location", [("s3:GetBucketLocation", "arn:aws:s3:::b")]),
    ("GET", "/", [("s3:ListAllMyBuckets", ALL_BUCKETS_ARN)]),
    ("PUT", "/b", [("s3:CreateBucket", "arn:aws:s3:::b")]),
    ("DELETE", "/b", [("s3:DeleteBucket", "arn:aws:s3:::b")]),
    ("GET", "/b?acl", [("s3:GetBucketAcl", "arn:aws:s3:::b")]),
    ("PUT", "/b?acl", [("s3:PutBucketAcl", "arn:aws:s3:::b")]),
    ("GET", "/b?policy", [("s3:GetBucketPolicy", "arn:aws:s3:::b")]),
    ("PUT", "/b?policy", [("s3:PutBucketPolicy", "arn:aws:s3:::b")]),
    ("DELETE", "/b?policy", [("s3:DeleteBucketPolicy", "arn:aws:s3:::b")]),
    ("GET", "/b?versioning", [("s3:GetBucketVersioning", "arn:aws:s3:::b")]),
    ("PUT", "/b?versioning", [("s3:PutBucketVersioning", "arn:aws:s3:::b")]),
    ("GET", "/b?tagging", [("s3:GetBucketTagging", "arn:aws:s3:::b")]),
    ("DELETE", "/b?tagging", [("s3:PutBucketTagging", "arn:aws:s3:::b")]),
    ("PUT", "/b?cors", [("s3:PutBucketCORS", "arn:aws:s3:::b")]),
    ("GET", "/b?lifecycle", [("s3:GetLifecycleConfiguration", "arn:aws:s3:::b")]),
    ("PUT", "/b?publicAccessBlock", [("s3:PutBucketPublicAccessBlock", "arn:aws:s3:::b")]),
    ("GET", "/b?object-lock", [("s3:GetBucketObjectLockConfiguration", "arn:aws:s3:::b")]),
])
def test_request_mapping(method: str, target: str, expected: list[tuple[str, str]]) -> None:
    assert needs(method, target) == expected


def test_keys_are_percent_decoded_once_and_keep_their_slashes() -> None:
    assert needs("GET", "/b/a%2Fb%20c/%25d") == [("s3:GetObject", "arn:aws:s3:::b/a/b c/%d")]
    assert needs("GET", "/b//lead") == [("s3:GetObject", "arn:aws:s3:::b//lead")]
    assert split_path("/b/sessions/A/") == ("b", "sessions/A/")


@pytest.mark.parametrize("path", ["b/k", "//b/k", "/b%2Fx/k", "/b;x", "/b/k#frag", "http://host/b/k"])
def test_paths_that_could_be_read_two_ways_are_refused(path: str) -> None:
    with pytest.raises(RequestError):
        split_path(path)


def test_listing_condition_keys() -> None:
    (v2,) = required_permissions(req("GET", "/b?list-type=2&prefix=sessions%2FA%2F&delimiter=%2F&max-keys=10"))
    assert v2.context["s3:prefix"] == "sessions/A/"
    assert v2.context["s3:delimiter"] == "/"
    assert v2.context["s3:max-keys"] == "10"
    (v1,) = required_permissions(req("GET", "/b/?prefix=sessions/A/"))  # s3fs: unencoded, v1
    assert v1.context["s3:prefix"] == "sessions/A/" and "s3:delimiter" not in v1.context
    (root,) = required_permissions(req("GET", "/b"))
    assert root.context["s3:prefix"] == "" and "s3:max-keys" not in root.context
    (head,) = required_permissions(req("HEAD", "/b"))
    assert head.context["s3:prefix"] == ""


def test_copy_needs_put_on_target_and_get_on_source() -> None:
    assert needs("PUT", "/b/sessions/A/y", x_amz_copy_source="/b/sessions/B/x") == [
        ("s3:PutObject", "arn:aws:s3:::b/sessions/A/y"), ("s3:GetObject", "arn:aws:s3:::b/sessions/B/x")]
    assert needs("PUT", "/b/t?partNumber=1&uploadId=U", x_amz_copy_source="src/a%20b?versionId=7") == [
        ("s3:PutObject", "arn:aws:s3:::b/t"), ("s3:GetObjectVersion", "arn:aws:s3:::src/a b")]


@pytest.mark.parametrize("source", ["nokey", "http://evil/b/k", "//evil/b/k", "b/k;p", "b/k#f", "b/k?acl", "", "/b/"])
def test_malformed_copy_sources_are_refused(source: str) -> None:
    with pytest.raises(RequestError):
        parse_copy_source(source)
    with pytest.raises(RequestError):
        required_permissions(req("PUT", "/b/k", x_amz_copy_source=source))


def test_headers_that_set_acl_tags_or_locks_need_their_actions() -> None:
    assert needs("PUT", "/b/k", x_amz_acl="public-read", x_amz_tagging="a=b") == [
        ("s3:PutObject", "arn:aws:s3:::b/k"), ("s3:PutObjectAcl", "arn:aws:s3:::b/k"),
        ("s3:PutObjectTagging", "arn:aws:s3:::b/k")]
    held = needs("POST", "/b/k?uploads", x_amz_object_lock_legal_hold="ON")
    assert ("s3:PutObjectLegalHold", "arn:aws:s3:::b/k") in held
    assert ("s3:PutBucketAcl", "arn:aws:s3:::b") in needs("PUT", "/b", x_amz_acl="private")
    assert needs("DELETE", "/b/k", x_amz_bypass_governance_retention="true") == [
        ("s3:DeleteObject", "arn:aws:s3:::b/k"), ("s3:BypassGovernanceRetention", "arn:aws:s3:::b/k")]
    bypassing = needs("POST", "/b?delete", b"<Delete><Object><Key>k</Key></Object></Delete>",
                      x_amz_bypass_governance_retention="true")
    assert bypassing == [("s3:DeleteObject", "arn:aws:s3:::b/k"), ("s3:BypassGovernanceRetention", "arn:aws:s3:::b/k")]


@pytest.mark.parametrize(("method", "target"), [
    ("DELETE", "/b?analytics"),     # moto would delete the bucket
    ("PUT", "/b?analytics"),        # moto would create the bucket
    ("GET", "/b/k?retention"),      # moto would return the object
    ("PUT", "/b/k?uploadId=U"),     # no partNumber: moto would overwrite the object
    ("DELETE", "/b/k?uploadId="),   # empty upload id
    ("GET", "/b/k?acl&tagging"),    # two sub-resources
    ("GET", "/b/k?versionId=1&versionId=2"),
    ("POST", "/b"),                 # browser form upload: the key is in the body
    ("POST", "/b/k"),
    ("HEAD", "/b/k?acl"),
    ("OPTIONS", "/b/k"),
    ("GET", "/?acl"),
    ("GET", "/b/k?somethingnew"),
])
def test_operations_the_backend_would_read_differently_are_refused(method: str, target: str) -> None:
    with pytest.raises(RequestError):
        required_permissions(req(method, target))


# -- multi-object delete -------------------------------------------------------------------
def delete_body(*keys: str, extra: str = "", ns: bool = True) -> bytes:
    xmlns = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' if ns else ""
    objects = "".join(f"<Object><Key>{k}</Key></Object>" for k in keys)
    return f'<?xml version="1.0" encoding="UTF-8"?><Delete{xmlns}>{objects}{extra}<Quiet>true</Quiet></Delete>'.encode()


def test_multi_object_delete_needs_delete_on_every_key() -> None:
    request = req("POST", "/b?delete")
    assert needs_body(request) and not needs_body(req("POST", "/b/k?uploads"))
    body = delete_body("sessions/A/x", "sessions/A/a &amp; b")
    assert needs("POST", "/b?delete", body) == [
        ("s3:DeleteObject", "arn:aws:s3:::b/sessions/A/x"), ("s3:DeleteObject", "arn:aws:s3:::b/sessions/A/a & b")]
    versioned = b"<Delete><Object><Key>k</Key><VersionId>v1</VersionId></Object></Delete>"
    (permission,) = required_permissions(request, versioned)
    assert (permission.action, permission.context["s3:versionid"]) == ("s3:DeleteObjectVersion", "v1")
    spaced = b"<Delete>\n <Object>\n  <Key> spaced </Key>\n </Object>\n</Delete>"
    assert parse_delete_body(spaced) == ((" spaced ", None),)


@pytest.mark.parametrize("body", [
    b"",
    b"not xml",
    b"<Delete></Delete>",
    b"<Other><Object><Key>k</Key></Object></Other>",
    b'<!DOCTYPE d [<!ENTITY b "sessions/B/x">]><Delete><Object><Key>&b;</Key></Object></Delete>',
    b'<s3:Delete xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<s3:Object><s3:Key>k</s3:Key></s3:Object></s3:Delete>",
    b'<Delete><Object xmlns="urn:other"><Key>k</Key></Object></Delete>',
    b'<Delete><x:Object xmlns:x="urn:x"><Key>sessions/B/x</Key></x:Object><Object><Key>k</Key></Object></Delete>',
    b"<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>",
    b"<Delete><Object><Key>a<i/>b</Key></Object></Delete>",
    b'<Delete><Object><Key id="1">a</Key></Object></Delete>',
    b"<Delete><Object><Key></Key></Object></Delete>",
    b"<Delete>text<Object><Key>k</Key></Object></Delete>",
    b"<Delete><Object><Key>k</Key></Object></Delete>trailing",
    # a body that a form reader would take apart differently: everything hides in a comment
    b"<Delete><!--&key=1&<Delete><Object><Key>sessions/B/x</Key></Object>--></Delete>",
])
def test_malformed_or_ambiguous_delete_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(RequestError) as err:
        required_permissions(req("POST", "/b?delete"), body)
    assert err.value.code == "MalformedXML"


def test_delete_body_limits() -> None:
    assert len(parse_delete_body(delete_body(*[f"k{i}" for i in range(1000)]))) == 1000
    with pytest.raises(RequestError):
        parse_delete_body(delete_body(*[f"k{i}" for i in range(1001)]))


# -- policies ------------------------------------------------------------------------------
def test_the_example_session_policy() -> None:
    policy = parse_policy(example_policy("A"))
    allowed = [
        ("GET", "/sandbox-sessions/sessions/A/f"), ("HEAD", "/sandbox-sessions/sessions/A/f"),
        ("PUT", "/sandbox-sessions/sessions/A/f"), ("DELETE", "/sandbox-sessions/sessions/A/f"),
        ("HEAD", "/sandbox-sessions/sessions/A"), ("PUT", "/sandbox-sessions/sessions/A/"),
        ("POST", "/sandbox-sessions/sessions/A/big?uploads"),
        ("PUT", "/sandbox-sessions/sessions/A/big?partNumber=1&uploadId=U"),
        ("GET", "/sandbox-sessions/sessions/A/big?uploadId=U"),
        ("POST", "/sandbox-sessions/sessions/A/big?uploadId=U"),
        ("DELETE", "/sandbox-sessions/sessions/A/big?uploadId=U"),
        ("GET", "/sandbox-sessions/?prefix=sessions/A/"),
        ("GET", "/sandbox-sessions/?delimiter=/&max-keys=1000&prefix=sessions/A/"),
        ("GET", "/sandbox-sessions?list-type=2&prefix=sessions%2FA%2Fdir%2F&delimiter=%2F"),
    ]
    refused = [
        ("GET", "/sandbox-sessions/sessions/B/f"), ("PUT", "/sandbox-sessions/sessions/B/f"),
        ("GET", "/sandbox-sessions/sessions/AB/f"), ("PUT", "/sandbox-sessions/sessions/AB"),
        ("GET", "/sandbox-sessions/other"), ("GET", "/other-bucket/sessions/A/f"),
        ("GET", "/sandbox-sessions/"), ("GET", "/sandbox-sessions?list-type=2"),
        ("GET", "/sandbox-sessions?list-type=2&prefix=sessions%2F"),
        ("GET", "/sandbox-sessions?list-type=2&prefix=sessions%2FB%2F"),
        # Without its '/', the prefix would also list the key names of sessions/AB/... (RGW does).
        ("GET", "/sandbox-sessions?list-type=2&prefix=sessions%2FA"),
        ("HEAD", "/sandbox-sessions"), ("GET", "/"), ("PUT", "/new-bucket"), ("DELETE", "/sandbox-sessions"),
        ("GET", "/sandbox-sessions?uploads"), ("GET", "/sandbox-sessions?location"),
        ("GET", "/sandbox-sessions/sessions/A/f?acl"), ("PUT", "/sandbox-sessions/sessions/A/f?tagging"),
        ("GET", "/sandbox-sessions/sessions/A/f?versionId=1"),
    ]
    for method, target in allowed:
        assert authorize(policy, required_permissions(req(method, target))) is None, (method, target)
    for method, target in refused:
        denial = authorize(policy, required_permissions(req(method, target)))
        assert denial is not None and denial.decision is Decision.IMPLICIT_DENY, (method, target)
    copy_in = required_permissions(req("PUT", "/sandbox-sessions/sessions/A/y",
                                       x_amz_copy_source="sandbox-sessions/sessions/B/x"))
    denial = authorize(policy, copy_in)
    assert denial is not None and denial.permission.resource == obj("sessions/B/x")
    assert "s3:GetObject" in denial.message and obj("sessions/B/x") in denial.message
    delete = required_permissions(req("POST", "/sandbox-sessions?delete"), delete_body("sessions/A/x", "sessions/B/x"))
    denial = authorize(policy, delete)
    assert denial is not None and denial.permission.resource == obj("sessions/B/x")
    own = required_permissions(req("POST", "/sandbox-sessions?delete"), delete_body("sessions/A/x"))
    assert authorize(policy, own) is None


def test_the_session_policy_allows_the_private_canned_acl_only() -> None:
    """Some clients send x-amz-acl: private with every upload: that, and nothing wider, is allowed."""
    policy = parse_policy(example_policy("A"))
    key = "/sandbox-sessions/sessions/A/f"
    assert authorize(policy, required_permissions(req("PUT", key, x_amz_acl="private"))) is None
    refused = [
        req("PUT", key, x_amz_acl="public-read"),
        req("PUT", key, x_amz_acl="private", x_amz_grant_read="uri=http://acs.amazonaws.com/groups/global/AllUsers"),
        req("PUT", key, x_amz_grant_full_control="id=someone"),
        req("PUT", key + "?acl"),  # an ACL in the body
        req("PUT", "/sandbox-sessions/sessions/B/f", x_amz_acl="private"),
    ]
    for request in refused:
        assert authorize(policy, required_permissions(request)) is not None, request


def test_no_policy_allows_everything() -> None:
    assert authorize(None, required_permissions(req("DELETE", "/any-bucket"))) is None


def perm(action: str, resource: str = "arn:aws:s3:::b/k", **context: str) -> Permission:
    return Permission(action, resource, {k.replace("_", "-"): v for k, v in context.items()})


def policy_of(*statements: dict[str, object]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def test_explicit_deny_wins_over_allow() -> None:
    policy = parse_policy(policy_of(
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::b/keep/*"},
    ))
    assert decide(policy, perm("s3:DeleteObject", "arn:aws:s3:::b/other")) is Decision.ALLOW
    assert decide(policy, perm("s3:DeleteObject", "arn:aws:s3:::b/keep/x")) is Decision.EXPLICIT_DENY
    assert decide(policy, perm("s3:GetObject", "arn:aws:s3:::b/keep/x")) is Decision.ALLOW
    denial = authorize(policy, [perm("s3:DeleteObject", "arn:aws:s3:::b/keep/x")])
    assert denial is not None and "explicit Deny" in denial.message


def test_action_wildcards_are_case_insensitive() -> None:
    policy = parse_policy(policy_of({"Effect": "Allow", "Action": ["S3:get*", "s3:List?ucket"], "Resource": "*"}))
    assert decide(policy, perm("s3:GetObject")) is Decision.ALLOW
    assert decide(policy, perm("s3:GetObjectAcl")) is Decision.ALLOW
    assert decide(policy, perm("s3:ListBucket")) is Decision.ALLOW
    assert decide(policy, perm("s3:ListBucketVersions")) is Decision.IMPLICIT_DENY
    assert decide(policy, perm("s3:PutObject")) is Decision.IMPLICIT_DENY
    everything = parse_policy(policy_of({"Effect": "Allow", "Action": "*", "Resource": "*"}))
    assert decide(everything, perm("s3:CreateBucket", "arn:aws:s3:::x")) is Decision.ALLOW


def test_resource_wildcards_are_case_sensitive_and_cross_slashes() -> None:
    policy = parse_policy(policy_of({"Effect": "Allow", "Action": "s3:GetObject",
                                     "Resource": ["arn:aws:s3:::b/home/*/notes", "arn:aws:s3:::b/f?le"]}))
    assert decide(policy, perm("s3:GetObject", "arn:aws:s3:::b/home/a/b/notes")) is Decision.ALLOW
    assert decide(policy, perm("s3:GetObject", "arn:aws:s3:::b/file")) is Decision.ALLOW
    assert decide(policy, perm("s3:GetObject", "arn:aws:s3:::b/fiile")) is Decision.IMPLICIT_DENY
    assert decide(policy, perm("s3:GetObject", "arn:aws:s3:::b/FILE")) is Decision.IMPLICIT_DENY
    assert decide(policy, perm("s3:GetObject", "arn:aws:s3:::b/home/a/notes.txt")) is Decision.IMPLICIT_DENY
    # regex metacharacters in a pattern are literal
    literal = parse_policy(policy_of({"Effect": "Allow", "Action": "s3:GetObject",
                                      "Resource": "arn:aws:s3:::b/a.c+(d)"}))
    assert decide(literal, perm("s3:GetObject", "arn:aws:s3:::b/a.c+(d)")) is Decision.ALLOW
    assert decide(literal, perm("s3:GetObject", "arn:aws:s3:::b/abc+(d)")) is Decision.IMPLICIT_DENY


def test_list_all_buckets_resource() -> None:
    for resource in ("*", "arn:aws:s3:::*"):
        policy = parse_policy(policy_of({"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": resource}))
        assert authorize(policy, required_permissions(req("GET", "/"))) is None
    narrow = parse_policy(policy_of({"Effect": "Allow", "Action": "s3:ListAllMyBuckets",
                                     "Resource": "arn:aws:s3:::b*"}))
    assert authorize(narrow, required_permissions(req("GET", "/"))) is not None


def test_not_action_and_not_resource() -> None:
    policy = parse_policy(policy_of(
        {"Effect": "Allow", "NotAction": ["s3:Delete*"], "Resource": "arn:aws:s3:::b/*"},
        {"Effect": "Deny", "Action": "s3:*", "NotResource": ["arn:aws:s3:::b/*", "arn:aws:s3:::b"]},
    ))
    assert decide(policy, perm("s3:GetObject", "arn:aws:s3:::b/k")) is Decision.ALLOW
    assert decide(policy, perm("s3:DeleteObject", "arn:aws:s3:::b/k")) is Decision.IMPLICIT_DENY
    assert decide(policy, perm("s3:GetObject", "arn:aws:s3:::c/k")) is Decision.EXPLICIT_DENY


@pytest.mark.parametrize(("condition", "context", "allowed"), [
    ({"StringEquals": {"s3:prefix": ["a/", "b/"]}}, {"s3:prefix": "b/"}, True),
    ({"StringEquals": {"s3:prefix": "a/"}}, {"s3:prefix": "A/"}, False),
    ({"StringEquals": {"s3:prefix": "a/"}}, {}, False),
    ({"StringNotEquals": {"s3:prefix": ["a/", "b/"]}}, {"s3:prefix": "c/"}, True),
    ({"StringNotEquals": {"s3:prefix": ["a/", "b/"]}}, {"s3:prefix": "a/"}, False),
    ({"StringNotEquals": {"s3:prefix": "a/"}}, {}, True),  # absent key: negated operators hold
    ({"StringEqualsIgnoreCase": {"s3:prefix": "a/"}}, {"s3:prefix": "A/"}, True),
    ({"StringNotEqualsIgnoreCase": {"s3:prefix": "a/"}}, {"s3:prefix": "A/"}, False),
    ({"StringLike": {"s3:prefix": ["home/*", "x?"]}}, {"s3:prefix": "home/a/b"}, True),
    ({"StringLike": {"s3:prefix": ["home/*", "x?"]}}, {"s3:prefix": "xy"}, True),
    ({"StringLike": {"s3:prefix": ["home/*", "x?"]}}, {"s3:prefix": "xyz"}, False),
    ({"StringLike": {"s3:prefix": "*"}}, {}, False),
    ({"StringNotLike": {"s3:prefix": "secret/*"}}, {"s3:prefix": "public/"}, True),
    ({"StringNotLike": {"s3:prefix": "secret/*"}}, {"s3:prefix": "secret/x"}, False),
    ({"StringLikeIfExists": {"s3:prefix": "a*"}}, {}, True),
    ({"StringLikeIfExists": {"s3:prefix": "a*"}}, {"s3:prefix": "b"}, False),
    ({"StringEqualsIfExists": {"s3:delimiter": "/"}}, {"s3:delimiter": "/"}, True),
    ({"Null": {"s3:delimiter": "true"}}, {}, True),
    ({"Null": {"s3:delimiter": "true"}}, {"s3:delimiter": "/"}, False),
    ({"Null": {"s3:delimiter": "false"}}, {"s3:delimiter": "/"}, True),
    ({"Null": {"s3:delimiter": False}}, {}, False),
    ({"NumericLessThanEquals": {"s3:max-keys": "100"}}, {"s3:max-keys": "50"}, True),
    ({"NumericLessThanEquals": {"s3:max-keys": 100}}, {"s3:max-keys": "500"}, False),
    ({"NumericLessThanEquals": {"s3:max-keys": "100"}}, {"s3:max-keys": "many"}, False),
    ({"Bool": {"aws:SecureTransport": False}}, {"aws:securetransport": "false"}, True),
    # several keys and several operators must all hold
    ({"StringEquals": {"s3:prefix": "a/", "s3:delimiter": "/"}}, {"s3:prefix": "a/"}, False),
    ({"StringEquals": {"s3:prefix": "a/"}, "Null": {"s3:max-keys": "true"}}, {"s3:prefix": "a/"}, True),
    # condition key names are case-insensitive
    ({"StringEquals": {"S3:Prefix": "a/"}}, {"s3:prefix": "a/"}, True),
    # operators the evaluator does not implement: an Allow does not apply
    ({"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}, {}, False),
    ({"ForAnyValue:StringLike": {"s3:prefix": "*"}}, {"s3:prefix": "a"}, False),
    ({"IpAddress": {"aws:SourceIp": "127.0.0.1/32"}}, {}, False),
    ({"NullIfExists": {"s3:prefix": "true"}}, {}, False),
])
def test_allow_conditions(condition: dict[str, object], context: dict[str, str], allowed: bool) -> None:
    policy = parse_policy(policy_of({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*",
                                     "Condition": condition}))
    expected = Decision.ALLOW if allowed else Decision.IMPLICIT_DENY
    assert decide(policy, Permission("s3:ListBucket", "arn:aws:s3:::b", context)) is expected


def test_deny_with_an_unimplemented_operator_still_denies() -> None:
    policy = parse_policy(policy_of(
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:*", "Resource": "*",
         "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}},
    ))
    assert decide(policy, perm("s3:GetObject")) is Decision.EXPLICIT_DENY
    # ... unless another condition of the same statement is definitely false
    scoped = parse_policy(policy_of(
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:*", "Resource": "*",
         "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}, "StringEquals": {"s3:prefix": "x"}}},
    ))
    assert decide(scoped, perm("s3:GetObject")) is Decision.ALLOW


def test_conditions_on_real_requests() -> None:
    policy = parse_policy(policy_of(
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
         "Condition": {"StringEquals": {"s3:delimiter": "/"}, "NumericLessThanEquals": {"s3:max-keys": "100"}}},
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::b/*",
         "Condition": {"StringEqualsIfExists": {"s3:x-amz-acl": "private"}}},
    ))
    assert authorize(policy, required_permissions(req("GET", "/b?delimiter=%2F&max-keys=10"))) is None
    assert authorize(policy, required_permissions(req("GET", "/b?delimiter=%2F"))) is not None
    assert authorize(policy, required_permissions(req("GET", "/b?delimiter=%2F&max-keys=1000"))) is not None
    put = Permission("s3:PutObject", "arn:aws:s3:::b/k", {"s3:x-amz-acl": "public-read"})
    assert decide(policy, put) is Decision.IMPLICIT_DENY
    assert decide(policy, Permission("s3:PutObject", "arn:aws:s3:::b/k", {})) is Decision.ALLOW


@pytest.mark.parametrize(("text", "cause"), [
    ("x" * 2049, "at most 2048"),
    ("{not json", "not valid JSON"),
    ("[]", "JSON object"),
    ('{"Version":"2012-10-17"}', "no Statement"),
    ('{"Version":"2099-01-01","Statement":[]}', "Version"),
    ('{"Statement":[],"Extra":1}', "unknown elements"),
    (policy_of({"Effect": "Maybe", "Action": "s3:*", "Resource": "*"}), "Effect"),
    (policy_of({"Effect": "Allow", "Resource": "*"}), "Action and NotAction"),
    (policy_of({"Effect": "Allow", "Action": "s3:*", "NotAction": "s3:Get*", "Resource": "*"}), "Action and NotAction"),
    (policy_of({"Effect": "Allow", "Action": "s3:*"}), "Resource and NotResource"),
    (policy_of({"Effect": "Allow", "Action": "GetObject", "Resource": "*"}), "SERVICE:NAME"),
    (policy_of({"Effect": "Allow", "Action": [], "Resource": "*"}), "non-empty"),
    (policy_of({"Effect": "Allow", "Action": "s3:*", "Resource": "bucket/*"}), "must be an ARN"),
    (policy_of({"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/${aws:username}/*"}),
     "policy variables"),
    (policy_of({"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Principal": "*"}), "Principal"),
    (policy_of({"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Condition": {"StringLike": "x"}}), "map keys"),
    (policy_of({"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Condition": {"Null": {"k": "maybe"}}}), "Null"),
    (policy_of({"Effect": "Allow", "Action": "s3:*", "Resource": "*",
                "Condition": {"NumericLessThan": {"s3:max-keys": "ten"}}}), "numbers"),
    (policy_of({"Effect": "Allow", "Action": "s3:*", "Resource": "*",
                "Condition": {"StringEquals": {"k": {"nested": 1}}}}), "string, number or boolean"),
])
def test_malformed_policies_name_the_cause(text: str, cause: str) -> None:
    with pytest.raises(PolicyError, match=cause):
        parse_policy(text)


def test_policy_shapes_that_are_accepted() -> None:
    single = parse_policy('{"Statement":{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}}')
    assert len(single.statements) == 1
    assert len(parse_policy(example_policy()).statements) == 3
    assert len(example_policy("some-session-id-0123456789")) < 2048


def test_glob_pattern() -> None:
    assert glob_pattern("a*b?c").fullmatch("a/x/ybZc")
    assert not glob_pattern("a*b?c").fullmatch("a/x/ybc")
    assert glob_pattern("S3:GET*", ignore_case=True).fullmatch("s3:GetObject")
    assert glob_pattern("line*").fullmatch("line\nbreak")

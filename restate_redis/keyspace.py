"""Every Redis key this library writes, and the rule that keeps one object in one slot.

Layout for namespace ``restate`` (the default) and an object ``Counter`` / ``alice``; this is
the one description of the keyspace, and the Lua scripts' headers point here::

    restate:{Counter:alice}:state   hash   the state: field = state key, value = serialized
                                           value; and two reserved fields, whose names start
                                           with a byte no UTF-8 text contains (so no state
                                           key can take them), left out of every read:
                                             "\xff"  the bookkeeping, a MessagePack array
                                                     [v, b, t, c, flags, prior?] (about 20
                                                     bytes, and the prior values when small):
                                               v  version: commits so far
                                               b  stored bytes of the state (names + values),
                                                  -1 while unknown (state written by
                                                  something else, counted by the next eager
                                                  open within the limits)
                                               t  time of the last applied commit (the
                                                  version's last change): seconds since the
                                                  Unix epoch by the server's clock (TIME); 0
                                                  before the first commit
                                               c  the last commit: the first 6 bytes of the
                                                  SHA-1 of its id ("" for none); replies
                                                  name it in hex (:func:`commit_tag`)
                                               flags  "" or letters: q prior values in the
                                                  array (up to 32 bytes), p prior values in
                                                  "\xfe", r the whole state before the last
                                                  (recorded) clear_all in old, R workflow
                                                  running, C workflow completed, e the object
                                                  has no state (or only state keys that
                                                  expire) and the hash expires after the
                                                  grace period
                                             "\xfe"  prior values of the keys the last
                                                     recorded commit changed, for a replay,
                                                     when they do not fit the bookkeeping: a
                                                     MessagePack array name, "+" value (or
                                                     "-" when absent), name, ...
    restate:{Counter:alice}:old     hash   the whole state before the last recorded
                                           clear_all (renamed, not copied), for its replay
    restate:{Counter:alice}:lease   string the exclusive lease: holder token, with a PX expiry
    restate:{Counter:alice}:wait    string set while a session waits for the lease (for the
                                           lease ttl): only then does a release signal wake
    restate:{Counter:alice}:wake    list   release signal that wakes one lease waiter (BLPOP)
    restate:{Counter:alice}:commits zset   recent commit ids (hashed), so a retried commit whose
                                           reply was lost is recognised; expires when idle
    restate:{Counter:alice}:ttls    zset   the state keys that have an expiry of their own
                                           (hash-field expiry): member "<bytes>:<state key>"
                                           (bytes: what the key counts in b), score = when
                                           it expires (Unix ms); the scripts take the bytes of
                                           the keys whose time passed out of b; its key expiry
                                           follows the state's
    restate:{Counter:alice}:history stream only with the store's history on: one entry per
                                           commit (version, origin, commit id, each changed
                                           state key's prior and new value), in the same
                                           script as the commit; trimmed by count and age,
                                           its key expiry follows the state's (history.py)

An idle object is one hash: its bookkeeping costs about 30 to 50 bytes over a plain hash of the
same state (docs/operations/capacity.md). Keyspace version 1 kept the bookkeeping in hashes of their
own (``:meta``, and ``:prev`` for prior values); a script that meets such an object moves them
into the state hash in place (upgrade.lua), atomically, the first time it opens, commits or
purges it.

An object whose state becomes empty keeps its bookkeeping for ``EMPTY_GRACE`` after its last
commit (so a replay of that commit is still recognised), then its hash, old, ttls and
history expire;
one whose every state key has an expiry keeps it until ``EMPTY_GRACE`` after the last of them.

Service names and object keys are percent-encoded (RFC 3986 unreserved characters stay as
they are; everything else, including ``{ } : * ? [ ] \\ %``, spaces and non-ASCII, becomes
``%XX`` of its UTF-8 bytes). The encoding is reversible, the encoded form never contains a
brace, the separator or a glob character, and the whole ``{service:key}`` part is the Redis
Cluster hash tag, so every key of one object lives in one slot and one script can change
them together.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

import msgpack

from .errors import InvalidNameError

DEFAULT_NAMESPACE = "restate"
SEPARATOR = ":"

STATE = "state"
OLD = "old"
LEASE = "lease"
WAIT = "wait"
WAKE = "wake"
COMMITS = "commits"
TTLS = "ttls"
HISTORY = "history"
V1_META = "meta"  # keyspace version 1: moved into the state hash by the first script to meet it
V1_PREV = "prev"

# The reserved fields of the state hash: bytes 0xff and 0xfe never occur in UTF-8, and state
# keys are UTF-8 text, so no state key is one of them or starts with them.
META_FIELD = b"\xff"
PRIOR_FIELD = b"\xfe"


def reserved(field: bytes | str) -> bool:
    """True for a field of the state hash that is bookkeeping, not a state key."""
    if isinstance(field, str):
        return field[:1] in ("\xff", "\xfe")  # as decoded with latin-1 or surrogateescape
    return field[:1] in (b"\xff", b"\xfe")


@dataclass(frozen=True, slots=True)
class Meta:
    """The bookkeeping of one object (the state hash's field ``"\\xff"``, see above)."""

    version: int = 0
    size: int | None = None
    changed_ms: int | None = None
    commit: str | None = None
    flags: str = ""

    @property
    def workflow(self) -> str | None:
        """ "running", "completed" or None (not a workflow, or not run yet)."""
        if "C" in self.flags:
            return WORKFLOW_COMPLETED
        return WORKFLOW_RUNNING if "R" in self.flags else None

    @property
    def fading(self) -> bool:
        """The object has no state (or only expiring keys): its hash ends after the grace."""
        return "e" in self.flags

    @classmethod
    def parse(cls, raw: bytes | None) -> Meta:
        """The bookkeeping from its stored form; ``Meta()`` for none. ``ValueError`` names
        what does not parse."""
        if raw is None:
            return cls()
        try:
            v, b, t, c, flags, *_ = msgpack.unpackb(raw, raw=True)
            # the scripts' rule (meta.lua): whole numbers, b from -1 (unknown), t from 0
            ints = all(type(x) is int for x in (v, b, t)) and v >= 0 and b >= -1 and t >= 0
            if not (ints and isinstance(c, bytes) and isinstance(flags, bytes)):
                raise ValueError
        except Exception:
            raise ValueError(
                f"bookkeeping {raw!r} is not a MessagePack array [v, b, t, c, flags]"
            ) from None
        return cls(
            v,
            b if b >= 0 else None,
            t * 1000 if t else None,
            c.hex() or None,
            flags.decode("ascii", "replace"),
        )


def commit_tag(commit_id: str) -> str:
    """What the bookkeeping keeps of a commit id (and the open's reply names): the first 12
    hex digits of its SHA-1, so the field stays short whatever the id's length."""
    return hashlib.sha1(commit_id.encode()).hexdigest()[:12]


# How long an object left with no state keeps its bookkeeping after its last commit: as long
# as Restate keeps a completed invocation's idempotency record by default, so a retried
# invocation is still recognised as a replay.
EMPTY_GRACE_SECONDS = 24 * 3600

WORKFLOW_RUNNING = "running"
WORKFLOW_COMPLETED = "completed"

_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")  # RFC 3986: what percent-encoding keeps


def encode_name(name: str) -> str:
    """Percent-encode a service name or object key for use inside a Redis key."""
    if _UNRESERVED.fullmatch(name):
        return name  # the common case, and nothing to encode
    return quote(name, safe="", encoding="utf-8", errors="strict")


def decode_name(encoded: str) -> str:
    """Invert :func:`encode_name`."""
    return unquote(encoded, encoding="utf-8", errors="strict")


def glob_escape(text: str) -> str:
    """Escape ``text`` so a SCAN MATCH pattern matches it literally."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not namespace:
        raise InvalidNameError(f"namespace must be a non-empty str, got {namespace!r}")
    if any(ch in namespace for ch in "{}"):
        raise InvalidNameError(f"namespace {namespace!r} must not contain '{{' or '}}'")
    return namespace


def check_service(service: object) -> str:
    if not isinstance(service, str):
        raise InvalidNameError(f"service name must be a str, got {type(service).__name__}")
    if not service:
        raise InvalidNameError("service name must not be empty")
    _check_utf8(service, "service name")
    return service


def check_key(service: str, key: object, what: str = "object key") -> str:
    if not isinstance(key, str):
        raise InvalidNameError(
            f"{what} of service {service!r} must be a str, got {type(key).__name__}"
        )
    _check_utf8(key, f"{what} of service {service!r}")
    return key


def _check_utf8(text: str, what: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidNameError(f"{what} {text!r} is not valid UTF-8: {exc.reason}") from None


@dataclass(frozen=True, slots=True)
class ObjectKeys:
    """The Redis keys of one object or workflow, all in one cluster slot."""

    state: str
    old: str
    lease: str
    wait: str
    wake: str
    commits: str
    ttls: str
    v1_meta: str
    v1_prev: str
    history: str

    @property
    def all(self) -> tuple[str, ...]:
        return (
            self.state,
            self.old,
            self.lease,
            self.wait,
            self.wake,
            self.commits,
            self.ttls,
            self.v1_meta,
            self.v1_prev,
            self.history,
        )


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Builds and parses the Redis key names under one namespace."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        check_namespace(self.namespace)

    def tag(self, service: str, key: str) -> str:
        return f"{{{encode_name(service)}{SEPARATOR}{encode_name(key)}}}"

    def object_keys(self, service: str, key: str) -> ObjectKeys:
        base = f"{self.namespace}{SEPARATOR}{self.tag(service, key)}{SEPARATOR}"
        return ObjectKeys(
            base + STATE,
            base + OLD,
            base + LEASE,
            base + WAIT,
            base + WAKE,
            base + COMMITS,
            base + TTLS,
            base + V1_META,
            base + V1_PREV,
            base + HISTORY,
        )

    def object_pattern(self, service: str, prefix: str = "", suffix: str = STATE) -> str:
        """SCAN pattern for the ``suffix`` keys of a service's objects whose key starts with
        ``prefix``."""
        ns = glob_escape(self.namespace)
        return (
            f"{ns}{SEPARATOR}{{{glob_escape(encode_name(service))}{SEPARATOR}"
            f"{glob_escape(encode_name(prefix))}*}}{SEPARATOR}{suffix}"
        )

    def all_pattern(self, suffix: str = STATE) -> str:
        """SCAN pattern for the ``suffix`` keys of every object in the namespace."""
        return f"{glob_escape(self.namespace)}{SEPARATOR}{{*}}{SEPARATOR}{suffix}"

    def parse(self, redis_key: str | bytes) -> tuple[str, str, str] | None:
        """Split a key of this namespace into (service, object key, kind), or None."""
        if isinstance(redis_key, bytes):
            redis_key = redis_key.decode("utf-8", "replace")
        head = f"{self.namespace}{SEPARATOR}{{"
        if not redis_key.startswith(head):
            return None
        rest = redis_key[len(head) :]
        close = rest.find("}")
        if close < 0 or not rest[close + 1 :].startswith(SEPARATOR):
            return None
        inner, kind = rest[:close], rest[close + 2 :]
        service, sep, key = inner.partition(SEPARATOR)
        if not sep:
            return None
        return decode_name(service), decode_name(key), kind

"""Every way to reach Redis: URL parsing and the redis.asyncio client each form needs.

URL forms (``[user[:password]@]`` is optional everywhere; user and password are
percent-decoded, so a ``@`` or ``:`` in them is written ``%40`` / ``%3A``)::

    redis://[user[:password]@]host[:port][/db][?option=value...]       plain TCP
    rediss://[user[:password]@]host[:port][/db][?option=value...]      TLS
    unix://[user[:password]@]/path/to/redis.sock[?db=N&...]            Unix socket
    redis+cluster://[user[:password]@]host:port[,host:port...][?...]   Redis Cluster
    rediss+cluster://...                                               Redis Cluster over TLS
    redis+sentinel://[user[:password]@]host:port[,host:port...]/service_name[/db][?...]
    rediss+sentinel://...                                              Sentinel, TLS to all

The first three are handed to ``redis.asyncio.Redis.from_url`` unchanged (its query options
apply). For cluster and sentinel the host list are seed nodes (cluster) or sentinels
(default port 6379 and 26379). User and password authenticate to the data nodes; for
sentinels that need their own credentials add ``?sentinel_username=...&sentinel_password=...``.
Other query options: ``db`` (sentinel only: Redis Cluster has only db 0),
``socket_timeout``, ``socket_connect_timeout`` (seconds), ``max_connections``,
``client_name``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``
(``none``, ``optional``, ``required``), ``ssl_check_hostname`` (``true``/``false``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import InvalidOptionError

RedisClient: TypeAlias = "aioredis.Redis | aioredis.RedisCluster"
"""A redis.asyncio client: a single server (plain, TLS, Unix socket, a Sentinel's master) or
a Redis Cluster."""

Kind = Literal["redis", "cluster", "sentinel"]

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
# Long enough for the longest BLPOP a lease wait sends (session.py caps each at 5 s), short
# enough that a silently dead peer turns into a retried TimeoutError instead of a hang.
DEFAULT_SOCKET_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0

_PLAIN = {"redis", "rediss", "unix"}
_SCHEMES = {
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_FLOAT_OPTIONS = {"socket_timeout", "socket_connect_timeout"}
_INT_OPTIONS = {"db", "max_connections"}
_BOOL_OPTIONS = {"ssl_check_hostname"}
_STR_OPTIONS = {
    "client_name",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "sentinel_username",
    "sentinel_password",
}


@dataclass(frozen=True)
class ConnectionSpec:
    """A parsed Redis URL: which kind of deployment, where, and how to authenticate."""

    kind: Kind
    url: str = field(repr=False)
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    service_name: str | None = None
    db: int = 0
    options: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def redacted_url(self) -> str:
        """The URL as it may be shown (see :func:`redact`)."""
        return redact(self.url)


# Query options whose value is a secret: redacted wherever a URL is shown.
_SECRET_WORDS = ("password", "secret", "token")
# Shorter "secrets" are not scrubbed from messages: replacing every "a" would garble them.
_MIN_SCRUBBED = 3
REDACTED = "***"


def _is_secret_option(name: str) -> bool:
    lowered = unquote(name).lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _split_userinfo(base: str) -> tuple[str, str, str] | None:
    """(text before the userinfo, userinfo, text from the "@" on) of a URL without its query,
    or None when it has no userinfo. Parsed by hand so that a malformed URL (a typo in the
    scheme, a raw "/" in the password) still hides its password."""
    head, at, host = base.rpartition("@")
    if not at:
        return None
    scheme, sep, userinfo = head.rpartition("://")
    if not sep:
        scheme, sep, userinfo = head.rpartition("//")
    return scheme + sep, userinfo, at + host


def redact(url: str) -> str:
    """``url`` as it may be shown: password and secret query options replaced by ``***``.

    The password of ``user:password@`` goes (a lone ``secret@`` too: it may well be a
    password), and so does the value of every query option whose name contains
    "password", "secret" or "token" (``?password=``, ``sentinel_password=``, ...).
    Works on malformed URLs as well, so an error about a bad URL never echoes its secrets.
    """
    if not isinstance(url, str):
        return REDACTED
    base, qmark, query = url.partition("?")
    query, hash_, fragment = query.partition("#")
    if not qmark:
        base, hash_, fragment = base.partition("#")
    parts = _split_userinfo(base)
    if parts is not None:
        head, userinfo, tail = parts
        user, colon, password = userinfo.partition(":")
        if colon and password:
            base = f"{head}{user}:{REDACTED}{tail}"
        elif not colon and userinfo:
            base = f"{head}{REDACTED}{tail}"
    if qmark:
        pairs = []
        for pair in re.split(r"([&;])", query):
            name, eq, value = pair.partition("=")
            pairs.append(f"{name}={REDACTED}" if eq and value and _is_secret_option(name) else pair)
        query = "".join(pairs)
    return base + qmark + query + hash_ + fragment


def secrets_in(url: str) -> list[str]:
    """The secrets a URL carries (as written and percent-decoded), longest first."""
    if not isinstance(url, str):
        return []
    found: set[str] = set()
    base, _, query = url.partition("?")
    query = query.partition("#")[0]
    parts = _split_userinfo(base.partition("#")[0])
    if parts is not None:
        user, colon, password = parts[1].partition(":")
        found.add(password if colon else user)
    for pair in re.split(r"[&;]", query):
        name, eq, value = pair.partition("=")
        if eq and _is_secret_option(name):
            found.add(value)
    found |= {unquote(s) for s in found} | {unquote_plus(s) for s in found}
    return sorted((s for s in found if len(s) >= _MIN_SCRUBBED), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (an error message, say) with ``url`` redacted and its secrets replaced."""
    if isinstance(url, str) and url:
        text = text.replace(url, redact(url))
    for secret in secrets_in(url):
        text = text.replace(secret, REDACTED)
    return text


def _bad(url: str, why: str) -> ValueError:
    return InvalidOptionError(scrub(f"bad Redis URL {redact(url)!r}: {why}", url))


def _host_port(url: str, text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [ipv6]:port
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise _bad(url, f"cannot read host {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _bad(url, f"empty host in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(url, f"port of {text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _options(url: str, query: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        try:
            if name in _FLOAT_OPTIONS:
                out[name] = float(value)
            elif name in _INT_OPTIONS:
                out[name] = int(value)
            elif name in _BOOL_OPTIONS:
                if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                out[name] = value.lower() in {"true", "1", "yes"}
            elif name in _STR_OPTIONS:
                out[name] = value
            else:
                known = sorted(_FLOAT_OPTIONS | _INT_OPTIONS | _BOOL_OPTIONS | _STR_OPTIONS)
                raise _bad(url, f"unknown option {name!r} (known: {', '.join(known)})")
        except ValueError as exc:
            if str(exc).startswith("bad Redis URL"):
                raise
            raise _bad(url, f"option {name}={value!r} is not a valid value") from None
    return out


def _check_plain(url: str, scheme: str) -> None:
    """What redis-py would silently get wrong in a plain URL: it reads ``/notadb`` (or
    ``/1/2``) as database 0 (or 12), so check the database and port here."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise _bad(url, f"cannot read it ({exc})") from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "db" in query and not query["db"].isdigit():
        raise _bad(url, f"database {query['db']!r} (?db=) is not a number")
    if scheme == "unix":
        if not parts.path:
            raise _bad(url, "a unix:// URL needs the socket's path: unix:///path/redis.sock")
        return
    path = unquote(parts.path)
    if path not in ("", "/") and not (path[1:].isdigit() and path[1:].isascii()):
        raise _bad(
            url,
            f"the path {path!r} is not a database number (expected redis://host:port/DB, "
            f"DB from 0)",
        )


def parse_url(url: str) -> ConnectionSpec:
    """Parse any of the URL forms in this module's docstring; a bad URL is an
    :class:`InvalidOptionError` (a ValueError)."""
    if not isinstance(url, str) or "://" not in url:
        shown = redact(url) if isinstance(url, str) else type(url).__name__
        raise InvalidOptionError(
            scrub(
                f"not a Redis URL: {shown!r} (expected e.g. redis://host:6379/0, "
                f"redis+cluster://host:7000,host:7001 or redis+sentinel://host:26379/mymaster)",
                url if isinstance(url, str) else "",
            )
        )
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme in _PLAIN:
        _check_plain(url, scheme)
        return ConnectionSpec(kind="redis", url=url, tls=scheme == "rediss")
    if scheme not in _SCHEMES:
        known = sorted(_PLAIN | set(_SCHEMES))
        raise _bad(url, f"unknown scheme {scheme!r} (known: {', '.join(known)})")
    kind, tls = _SCHEMES[scheme]
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    default_port = DEFAULT_SENTINEL_PORT if kind == "sentinel" else DEFAULT_PORT
    hosts = tuple(_host_port(url, h, default_port) for h in hostlist.split(",") if h)
    if not hosts:
        raise _bad(url, "no host given")
    options = _options(url, query)
    db = int(options.pop("db", 0))
    service_name = None
    parts = [unquote(p) for p in path.split("/") if p] if slash else []
    if kind == "sentinel":
        if not parts:
            raise _bad(url, "a sentinel URL names the service: redis+sentinel://host:port/name")
        service_name = parts[0]
        if len(parts) > 2:
            raise _bad(url, "expected /service_name[/db] after the sentinels")
        if len(parts) == 2:
            if not parts[1].isdigit():
                raise _bad(url, f"database {parts[1]!r} is not a number")
            db = int(parts[1])
    else:
        if parts not in ([], ["0"]):
            raise _bad(url, "Redis Cluster has only database 0; give no path")
        if db != 0:
            raise _bad(url, "Redis Cluster has only database 0")
    return ConnectionSpec(
        kind=kind,  # type: ignore[arg-type]
        url=url,
        hosts=hosts,
        username=username,
        password=password,
        tls=tls,
        service_name=service_name,
        db=db,
        options=options,
    )


def _ssl_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: options.pop(k) for k in list(options) if k.startswith("ssl_")}


def create_client(spec: ConnectionSpec, **redis_options: Any) -> RedisClient:
    """A new redis.asyncio client (``Redis`` or ``RedisCluster``) for ``spec``.

    ``redis_options`` go to the client and override the URL's options. The client returns
    bytes (``decode_responses=False``) and, for single servers and sentinel masters, does not
    retry on its own: the store's retry policy is the one place retries happen, so that it
    knows when a commit's reply was lost.
    """
    options = {**spec.options, **redis_options}
    options["decode_responses"] = False
    options.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
    options.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    if spec.kind == "redis":
        options.setdefault("retry", Retry(NoBackoff(), 0))
        return aioredis.Redis.from_url(spec.url, **options)
    if spec.username is not None:
        options.setdefault("username", spec.username)
    if spec.password is not None:
        options.setdefault("password", spec.password)
    if spec.kind == "cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        if spec.tls:
            options.setdefault("ssl", True)
        # The cluster client keeps its own retries: they refresh the slot map after a node
        # fails. (A commit they send again after it applied is recognised by commit.lua.)
        # A MOVED reply only patches the slot map (reinitialize_steps=0): redis-py's default
        # rebuilds the client on every fifth one, closing the connections other sessions'
        # commands are in flight on.
        options.setdefault("reinitialize_steps", 0)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in spec.hosts], **options)
    from redis.asyncio.sentinel import Sentinel

    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
    }
    for name in ("sentinel_username", "sentinel_password"):
        if name in options:
            sentinel_kwargs[name.removeprefix("sentinel_")] = options.pop(name)
    ssl = _ssl_options(options)
    if spec.tls:
        options["ssl"] = True
        options.update(ssl)
        sentinel_kwargs.update(ssl, ssl=True)
    options.setdefault("retry", Retry(NoBackoff(), 0))
    sentinel = Sentinel(list(spec.hosts), sentinel_kwargs=sentinel_kwargs, **options)  # type: ignore[no-untyped-call]
    assert spec.service_name is not None
    master: aioredis.Redis = sentinel.master_for(spec.service_name, db=spec.db)
    return master


def connect(url: str, **redis_options: Any) -> RedisClient:
    """Parse ``url`` and create its client."""
    return create_client(parse_url(url), **redis_options)


def socket_timeout_of(client: RedisClient) -> float | None:
    """The socket timeout a redis.asyncio client was created with, when it can be read."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs is None:
        kwargs = getattr(client, "connection_kwargs", None)
    if kwargs is None:  # RedisCluster keeps them on its node manager
        kwargs = getattr(getattr(client, "nodes_manager", None), "connection_kwargs", None) or {}
    value = kwargs.get("socket_timeout")
    return float(value) if isinstance(value, int | float) and value > 0 else None

"""Value codecs: compression and encryption at rest, between the serde and Redis.

A store given ``codecs=[Compression(...), Encryption(...)]`` passes every value the serde
wrote through them in that order before it is stored, and every stored value back through
them in the reverse order before the serde reads it. A value a codec changed carries a small
header saying so, which is how values of every kind live side by side in one hash: plain
ones written before the codecs were configured, compressed ones, encrypted ones, values under
an old key. Decoding follows the header, not the configuration: a compressed value is read
even after ``Compression`` was removed from the list.

The header starts with the byte ``0xC1``, which MessagePack never writes and UTF-8 (so JSON)
never contains, so no value written by those serdes can be mistaken for one::

    C1 'Z' zstd-frame                                   compressed (zstd, content size inside)
    C1 'E' n key-id[n] nonce[12] ciphertext+tag[16]     AES-256-GCM under key ``key-id``
    C1 'P' bytes                                        a serde's output that itself starts
                                                        with C1 (BytesSerde), kept as it is

The associated data of an encrypted value is its header up to the nonce and the service,
object key and state key it belongs to (each length-prefixed): a value copied to another
object or state key, or a header edited to name another key, does not decrypt.

``zstandard`` and ``cryptography`` are imported when a codec is created, not with the
package (``pip install 'restate-redis[codecs]'``).
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EncryptedValueError, InvalidOptionError, StateDecodeError, where
from .serde import BytesSerde

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENV_KEYS",
    "ENV_KEYS_FILE",
    "MAGIC",
    "CodecChain",
    "Compression",
    "Encryption",
    "Stored",
    "StoredBytes",
    "encryption_from_env",
    "inspect_stored",
]

MAGIC = b"\xc1"
_ZSTD = b"\xc1Z"
_SEALED = b"\xc1E"
_ESCAPED = b"\xc1P"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
ENV_KEYS = "RESTATE_REDIS_KEYS"
ENV_KEYS_FILE = "RESTATE_REDIS_KEYS_FILE"
EXTRA = "pip install 'restate-redis[codecs]'"
MiB = 1024 * 1024


def _missing(package: str, what: str, exc: ImportError) -> ImportError:
    error = ImportError(f"{what} needs the {package} package: {EXTRA}")
    error.__cause__ = exc
    return error


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:
        raise _missing("zstandard", "Compression", exc) from exc
    return zstandard


def _aesgcm() -> type[AESGCM]:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise _missing("cryptography", "Encryption", exc) from exc
    return AESGCM


def _positive(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidOptionError(f"{what} must be a positive int, got {value!r}")
    return value


class StoredBytes(BytesSerde):
    """The bytes of a value as Redis holds them, not passed through the store's codecs:
    ``session.get(name, serde=StoredBytes())`` returns the header and ciphertext of an
    encrypted value, and ``set`` with it stores bytes as given (what ``rekey`` uses)."""


# -- compression --------------------------------------------------------------------------------


class Compression:
    """zstd compression of values of at least ``min_bytes`` (default 1 KiB) as the serde
    wrote them.

    A value is stored compressed only when that makes it smaller; smaller values, and values
    zstd cannot shrink, are stored as they are. ``level`` is zstd's (1 fast ... 19 small,
    default 3). ``max_bytes`` bounds what one stored value may decompress to (default
    512 MiB, Redis's largest string), so that a forged frame cannot exhaust memory.
    Needs ``pip install 'restate-redis[codecs]'``.
    """

    __slots__ = ("_local", "_zstandard", "level", "max_bytes", "min_bytes")

    def __init__(self, min_bytes: int = 1024, *, level: int = 3, max_bytes: int = 512 * MiB):
        self.min_bytes = _positive(min_bytes, "Compression min_bytes")
        if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 22:
            raise InvalidOptionError(
                f"Compression level must be an int from 1 to 22, got {level!r}"
            )
        self.level = level
        self.max_bytes = _positive(max_bytes, "Compression max_bytes")
        self._zstandard = _zstd()
        self._local = threading.local()  # zstd contexts are not safe to share across threads

    def _compress(self, data: bytes) -> bytes:
        """``data`` as a compressed envelope, or unchanged when that would not be smaller."""
        if len(data) < self.min_bytes:
            return data
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = self._zstandard.ZstdCompressor(level=self.level)
        packed: bytes = compressor.compress(data)
        if len(packed) + len(_ZSTD) >= len(data):
            return data
        return _ZSTD + packed

    def __repr__(self) -> str:
        return f"Compression(min_bytes={self.min_bytes}, level={self.level})"


def _decompress(frame: bytes, max_bytes: int) -> bytes:
    zstandard = _zstd()
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a zstd frame: {exc}") from None
    if size < 0:
        raise ValueError("the zstd frame does not record its size")
    if size > max_bytes:
        raise ValueError(f"it would decompress to {size} bytes, over max_bytes={max_bytes}")
    try:
        out: bytes = zstandard.ZstdDecompressor().decompress(frame, max_output_size=max_bytes)
    except zstandard.ZstdError as exc:
        raise ValueError(f"the zstd frame does not decompress: {exc}") from None
    return out


# -- encryption ---------------------------------------------------------------------------------


def _check_key_id(key_id: object) -> str:
    if not isinstance(key_id, str):
        raise InvalidOptionError(f"an encryption key id must be a str, got {type(key_id).__name__}")
    if not key_id or len(key_id) > 64 or not key_id.isascii() or not key_id.isprintable():
        raise InvalidOptionError(
            f"encryption key id {key_id!r} must be 1 to 64 printable ASCII characters"
        )
    if any(c in key_id for c in "=, \t#"):
        raise InvalidOptionError(
            f"encryption key id {key_id!r} must not hold '=', ',', '#' or spaces"
        )
    return key_id


class Encryption:
    """AES-256-GCM encryption at rest with a key ring: ``keys`` maps key ids to 32-byte keys,
    new values are encrypted under ``current``, and a value under any key of the ring still
    decrypts, so keys rotate without downtime (then ``restate-redis rekey`` moves every value
    to the current key).

    Each value is bound to its service, object key and state key (associated data): a value
    copied elsewhere does not decrypt there. ``allow_plain`` (default True) reads values
    that are not encrypted (written before encryption was turned on) as they are; set it
    False once ``rekey`` has encrypted everything, so that a plain value planted in Redis is
    refused. Keys come from code, :meth:`from_env` or :meth:`from_file`; the repr names the
    key ids only. Needs ``pip install 'restate-redis[codecs]'``.
    """

    __slots__ = ("_ciphers", "_current", "_headers", "allow_plain")

    def __init__(
        self, keys: Mapping[str, bytes], current: str, *, allow_plain: bool = True
    ) -> None:
        if not isinstance(keys, Mapping) or not keys:
            raise InvalidOptionError("Encryption keys must be a non-empty mapping {key id: key}")
        aesgcm = _aesgcm()
        self._ciphers: dict[str, AESGCM] = {}
        self._headers: dict[str, bytes] = {}
        for key_id, key in keys.items():
            _check_key_id(key_id)
            if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
                size = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else "not bytes"
                raise InvalidOptionError(
                    f"encryption key {key_id!r} must be {KEY_BYTES} bytes (AES-256), got {size}"
                )
            self._ciphers[key_id] = aesgcm(bytes(key))
            self._headers[key_id] = _SEALED + bytes([len(key_id)]) + key_id.encode("ascii")
        if current not in self._ciphers:
            raise InvalidOptionError(
                f"the current encryption key {current!r} is not among the keys "
                f"({', '.join(map(repr, self._ciphers))})"
            )
        self._current = current
        self.allow_plain = bool(allow_plain)

    @property
    def current(self) -> str:
        """The id of the key new values are encrypted under."""
        return self._current

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of every key of the ring, the current one first."""
        return (self._current, *(k for k in self._ciphers if k != self._current))

    @staticmethod
    def generate_key() -> bytes:
        """A new random 32-byte key (``base64.b64encode`` it for ``RESTATE_REDIS_KEYS``)."""
        return os.urandom(KEY_BYTES)

    @classmethod
    def parse(
        cls, text: str, *, source: str = "the key list", allow_plain: bool = True
    ) -> Encryption:
        """Keys from ``ID=BASE64`` entries separated by commas or lines; the first is current.
        Blank lines and ``#`` comment lines are skipped. Errors name the entry, never a key."""
        # An entry that does not parse may hold a key where its id should be: such errors
        # name the entry by its position only, and ids are named once the key is good.
        entries: list[tuple[str, bytes]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for part in line.split(","):
                part = part.strip()
                if not part:
                    continue
                entry = f"{source}: entry {len(entries) + 1}"
                key_id, sep, encoded = part.partition("=")
                key_id, encoded = key_id.strip(), encoded.strip()
                if not sep or not key_id or not encoded:
                    raise InvalidOptionError(
                        f"{entry} is not ID=BASE64 (a key id, '=', then the key in base64)"
                    )
                try:
                    key = base64.b64decode(encoded, validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidOptionError(f"{entry}: the key is not valid base64") from None
                if len(key) != KEY_BYTES:
                    raise InvalidOptionError(
                        f"{entry}: the key must be {KEY_BYTES} bytes (AES-256), got {len(key)}"
                    )
                try:
                    _check_key_id(key_id)
                except InvalidOptionError:
                    raise InvalidOptionError(
                        f"{entry}: the key id must be 1 to 64 printable ASCII characters "
                        f"without '=', ',', '#' or spaces"
                    ) from None
                if any(known == key_id for known, _ in entries):
                    raise InvalidOptionError(f"{source}: key id {key_id!r} is given twice")
                entries.append((key_id, key))
        if not entries:
            raise InvalidOptionError(f"{source} holds no key (expected ID=BASE64,ID=BASE64...)")
        return cls(dict(entries), entries[0][0], allow_plain=allow_plain)

    @classmethod
    def from_env(cls, name: str = ENV_KEYS, *, allow_plain: bool = True) -> Encryption:
        """The keys of environment variable ``name`` (default ``RESTATE_REDIS_KEYS``):
        ``ID=BASE64,ID=BASE64...``, the first current. When it is not set and
        ``RESTATE_REDIS_KEYS_FILE`` is, the keys are read from that file (:meth:`from_file`)."""
        text = os.environ.get(name)
        if text is None and name == ENV_KEYS and os.environ.get(ENV_KEYS_FILE):
            return cls.from_file(os.environ[ENV_KEYS_FILE], allow_plain=allow_plain)
        if text is None:
            raise InvalidOptionError(
                f"the environment variable {name} is not set (expected ID=BASE64,ID=BASE64..., "
                f"the first the current key)"
            )
        return cls.parse(text, source=f"the environment variable {name}", allow_plain=allow_plain)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, allow_plain: bool = True) -> Encryption:
        """The keys of a file: ``ID=BASE64`` entries, one a line (or separated by commas),
        the first the current key; blank lines and ``#`` comments are skipped. Keep it
        readable by the service's user only (a Kubernetes or Docker secret, say)."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidOptionError(f"cannot read the key file {str(file)!r}: {exc}") from None
        return cls.parse(text, source=f"the key file {str(file)!r}", allow_plain=allow_plain)

    def _encrypt(self, data: bytes, context: bytes) -> bytes:
        """``data`` as an envelope under the current key, bound to ``context``."""
        header = self._headers[self._current]
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._ciphers[self._current].encrypt(nonce, data, header + context)

    def _cipher(self, key_id: str) -> AESGCM | None:
        return self._ciphers.get(key_id)

    def __repr__(self) -> str:
        return f"Encryption(current={self._current!r}, key_ids={list(self.key_ids)!r})"


# -- the chain ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stored:
    """What a stored value's header says about it."""

    encrypted: bool
    key_id: str | None  # the key an encrypted value is under
    compressed: bool  # known only for a value that is not encrypted


def _context(service: str, key: str, name: str) -> bytes:
    out = b""
    for part in (service, key, name):
        raw = part.encode("utf-8")
        out += struct.pack(">I", len(raw)) + raw
    return out


def _sealed_parts(stored: bytes) -> tuple[str, int] | None:
    """(key id, offset of the nonce) of an encrypted envelope, None when it is malformed."""
    if len(stored) < 3:
        return None
    n = stored[2]
    start = 3 + n
    if n == 0 or len(stored) < start + NONCE_BYTES + TAG_BYTES:
        return None
    try:
        return stored[3:start].decode("ascii"), start
    except UnicodeDecodeError:
        return None


def inspect_stored(stored: bytes) -> Stored:
    """What the header of ``stored`` says (no key needed)."""
    if stored[:2] == _SEALED:
        parts = _sealed_parts(stored)
        return Stored(True, parts[0] if parts else None, False)
    return Stored(False, None, stored[:2] == _ZSTD)


class CodecChain:
    """A store's codecs, in order, with the envelope rules: what sessions encode and decode
    values with. ``CodecChain(None)`` has no codec and still reads every envelope it can
    (compressed values), and says clearly what it cannot (encrypted ones)."""

    __slots__ = ("codecs", "compression", "encodes", "encryption", "strict")

    def __init__(self, codecs: Iterable[Compression | Encryption] | None = None) -> None:
        if codecs is not None and not isinstance(codecs, Iterable):
            raise InvalidOptionError(
                f"codecs must be a list of Compression and Encryption, got {type(codecs).__name__}"
            )
        self.codecs: tuple[Compression | Encryption, ...] = tuple(codecs or ())
        self.compression: Compression | None = None
        self.encryption: Encryption | None = None
        for codec in self.codecs:
            if isinstance(codec, Compression) and self.compression is None:
                if self.encryption is not None:
                    raise InvalidOptionError(
                        "codecs: put Compression before Encryption (codecs apply in order on "
                        "write, and ciphertext does not compress)"
                    )
                self.compression = codec
            elif isinstance(codec, Encryption) and self.encryption is None:
                self.encryption = codec
            elif isinstance(codec, Compression | Encryption):
                raise InvalidOptionError(f"codecs holds {type(codec).__name__} twice")
            else:
                raise InvalidOptionError(
                    f"codecs takes Compression and Encryption, got {type(codec).__name__}"
                )
        self.encodes = bool(self.codecs)
        """True when writes change values (a codec is configured)."""
        self.strict = self.encryption is not None and not self.encryption.allow_plain
        """True when every read must be decoded (a plain value is refused)."""

    def encode(self, data: bytes, service: str, key: str, name: str) -> bytes:
        """The bytes to store for serde output ``data`` of state key ``name``."""
        if data[:1] == MAGIC:
            data = _ESCAPED + data
        if self.compression is not None:
            data = self.compression._compress(data)
        if self.encryption is not None:
            data = self.encryption._encrypt(data, _context(service, key, name))
        return data

    def decode(self, stored: bytes, service: str, key: str, name: str) -> bytes:
        """The serde's bytes of a stored value; StateDecodeError naming the state key when
        it does not decode (EncryptedValueError when its key is not in this store's ring)."""
        if self.strict and stored[:2] != _SEALED:
            raise StateDecodeError(
                f"{where(service, key, name)} is not encrypted, and the store's Encryption "
                f"has allow_plain=False: it was not written through it"
            )
        data = stored
        for _ in range(3):  # at most: decrypt, decompress, unescape
            if data[:1] != MAGIC:
                return data
            tag = data[:2]
            if tag == _ESCAPED:
                return data[2:]
            if tag == _SEALED:
                data = self._decrypt(data, service, key, name)
            elif tag == _ZSTD:
                limit = self.compression.max_bytes if self.compression else 512 * MiB
                try:
                    data = _decompress(data[2:], limit)
                except ValueError as exc:
                    raise StateDecodeError(
                        f"cannot decompress {where(service, key, name)}: {exc}"
                    ) from None
            else:
                raise StateDecodeError(
                    f"{where(service, key, name)} starts with the codec header byte 0xC1 but "
                    f"a header {tag!r} no codec writes: it was not written by restate-redis"
                )
        raise StateDecodeError(f"{where(service, key, name)} nests codec headers too deeply")

    def _decrypt(self, data: bytes, service: str, key: str, name: str) -> bytes:
        parts = _sealed_parts(data)
        if parts is None:
            raise StateDecodeError(
                f"{where(service, key, name)} has a malformed encryption header (truncated, or "
                f"not written by restate-redis)"
            )
        key_id, start = parts
        if self.encryption is None:
            raise EncryptedValueError(
                f"{where(service, key, name)} is encrypted (key id {key_id!r}) and the store "
                f"has no Encryption: give it codecs=[..., Encryption(...)] (the CLI and the UI "
                f"read the keys from {ENV_KEYS})",
                key_id,
            )
        cipher = self.encryption._cipher(key_id)
        if cipher is None:
            raise EncryptedValueError(
                f"{where(service, key, name)} is encrypted under key id {key_id!r}, which the "
                f"store's Encryption does not have (it has "
                f"{', '.join(map(repr, self.encryption.key_ids))})",
                key_id,
            )
        nonce = data[start : start + NONCE_BYTES]
        try:
            out: bytes = cipher.decrypt(
                nonce, data[start + NONCE_BYTES :], data[:start] + _context(service, key, name)
            )
        except Exception as exc:  # cryptography's InvalidTag: tampered, moved, or another key
            raise StateDecodeError(
                f"cannot decrypt {where(service, key, name)} under key id {key_id!r}: it does "
                f"not authenticate (the stored bytes were changed, copied from another object "
                f"or state key, or encrypted under another key of that id)"
            ) from exc
        return out

    def reseal(self, stored: bytes, service: str, key: str, name: str) -> bytes | None:
        """``stored`` encrypted under the current key, or None when it already is. An
        encrypted value is decrypted (its inner bytes, compressed or not, are kept); any
        other value is encrypted as it is stored. Needs an Encryption."""
        if self.encryption is None:
            raise InvalidOptionError("re-encrypting needs a store with Encryption")
        if self.is_current(stored):
            return None
        inner = self._decrypt(stored, service, key, name) if stored[:2] == _SEALED else stored
        return self.encryption._encrypt(inner, _context(service, key, name))

    def is_current(self, stored: bytes) -> bool:
        """True when ``stored`` is encrypted under the current key (rekey leaves it)."""
        if self.encryption is None:
            return False
        info = inspect_stored(stored)
        return info.encrypted and info.key_id == self.encryption.current

    def __repr__(self) -> str:
        return f"CodecChain({list(self.codecs)!r})"


def encryption_from_env(environ: Mapping[str, str] | None = None) -> Encryption | None:
    """The tools' keys: ``RESTATE_REDIS_KEYS`` or the file ``RESTATE_REDIS_KEYS_FILE`` names;
    None when neither is set."""
    env = os.environ if environ is None else environ
    if env.get(ENV_KEYS):
        return Encryption.parse(env[ENV_KEYS], source=f"the environment variable {ENV_KEYS}")
    if env.get(ENV_KEYS_FILE):
        return Encryption.from_file(env[ENV_KEYS_FILE])
    return None

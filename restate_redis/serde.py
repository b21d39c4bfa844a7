"""How values become bytes in Redis and come back, typed by ``type_hint``.

A serde is anything with ``serialize(obj) -> bytes`` and ``deserialize(buf) -> object``, the
same shape as restate-sdk's ``Serde``, so the SDK's serdes work here unchanged. Decoding to
a requested type is separate (:func:`convert`) and applies to every serde: msgpack and JSON
give builtins, and ``type_hint`` turns them into dataclasses, pydantic models, msgspec
Structs, datetimes and the rest.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import sys
import types
import typing
import uuid
from abc import ABC, abstractmethod
from decimal import Decimal
from typing import Any, Generic, TypeVar

import msgpack

T = TypeVar("T")

__all__ = ["BytesSerde", "JsonSerde", "MsgPackSerde", "Serde", "convert", "to_builtins"]


class Serde(ABC, Generic[T]):
    """Turns values into bytes and back. Subclass it, or pass any object of this shape."""

    @abstractmethod
    def serialize(self, obj: T) -> bytes:
        """Encode ``obj``; raise TypeError or ValueError when it cannot be encoded."""

    @abstractmethod
    def deserialize(self, buf: bytes) -> T:
        """Decode bytes written by :meth:`serialize`."""


def to_builtins(obj: Any) -> Any:
    """One step from a rich value towards msgpack / JSON builtins (used as ``default=``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    dump = getattr(obj, "model_dump", None)
    if dump is not None and callable(dump):  # pydantic v2 model
        return dump()
    if "msgspec" in sys.modules:
        import msgspec

        if isinstance(obj, msgspec.Struct):
            return msgspec.structs.asdict(obj)
    if isinstance(obj, dt.datetime | dt.date | dt.time):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID | Decimal):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, set | frozenset):
        return sorted(obj) if all(isinstance(x, str | int) for x in obj) else list(obj)
    raise TypeError(f"cannot serialize value of type {type(obj).__name__}")


class MsgPackSerde(Serde[Any]):
    """The default: compact MessagePack. ``None`` is a value (0xC0), not an absent key."""

    def serialize(self, obj: Any) -> bytes:
        return msgpack.packb(obj, default=to_builtins, use_bin_type=True)  # type: ignore[no-any-return]

    def deserialize(self, buf: bytes) -> Any:
        return msgpack.unpackb(buf, raw=False, strict_map_key=False)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(obj)).decode("ascii")
    return to_builtins(obj)


class JsonSerde(Serde[Any]):
    """UTF-8 JSON, readable in redis-cli; bytes are stored as base64 strings."""

    def serialize(self, obj: Any) -> bytes:
        return json.dumps(
            obj, default=_json_default, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")

    def deserialize(self, buf: bytes) -> Any:
        return json.loads(buf)


class BytesSerde(Serde[bytes]):
    """Raw bytes in and out, untouched."""

    def serialize(self, obj: bytes) -> bytes:
        if not isinstance(obj, bytes | bytearray | memoryview):
            raise TypeError(f"BytesSerde takes bytes, got {type(obj).__name__}")
        return bytes(obj)

    def deserialize(self, buf: bytes) -> bytes:
        return bytes(buf)


def _fail(data: Any, tp: Any) -> typing.NoReturn:
    name = getattr(tp, "__name__", None) or repr(tp)
    raise TypeError(f"stored {type(data).__name__} value does not fit type_hint {name}")


def convert(data: Any, tp: Any) -> Any:
    """Turn decoded builtins into ``tp``; raise TypeError or ValueError when they do not fit."""
    if tp is None or tp is Any or tp is object:
        return data
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        errors: list[str] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(data, arg)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise TypeError("; ".join(errors) or f"no member of {tp!r} fits")
    if origin is typing.Annotated:
        return convert(data, typing.get_args(tp)[0])
    if origin is typing.Literal:
        if data in typing.get_args(tp):
            return data
        _fail(data, tp)
    if origin is not None:
        return _convert_generic(data, origin, typing.get_args(tp), tp)
    if not isinstance(tp, type):
        return data
    return _convert_class(data, tp)


def _convert_generic(data: Any, origin: Any, args: tuple[Any, ...], tp: Any) -> Any:
    if origin in (list, set, frozenset, typing.Sequence, typing.MutableSequence):
        if not isinstance(data, list | tuple):
            _fail(data, tp)
        item = args[0] if args else Any
        items = [convert(x, item) for x in data]
        return items if origin not in (set, frozenset) else origin(items)
    if origin is tuple:
        if not isinstance(data, list | tuple):
            _fail(data, tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(x, args[0]) for x in data)
        if args and len(args) != len(data):
            raise TypeError(f"expected {len(args)} items for {tp!r}, stored {len(data)}")
        return tuple(convert(x, a) for x, a in zip(data, args or [Any] * len(data), strict=True))
    if origin in (dict, typing.Mapping, typing.MutableMapping):
        if not isinstance(data, dict):
            _fail(data, tp)
        kt, vt = args if len(args) == 2 else (Any, Any)
        return {_convert_key(k, kt): convert(v, vt) for k, v in data.items()}
    if isinstance(origin, type):
        return _convert_class(data, origin)
    return data


def _convert_key(key: Any, tp: Any) -> Any:
    # JSON object keys are always strings: {1: "x"} comes back as {"1": "x"}.
    if tp in (int, float) and isinstance(key, str):
        try:
            return tp(key)
        except ValueError:
            _fail(key, tp)
    return convert(key, tp)


def _convert_class(data: Any, tp: type) -> Any:
    if tp is bool:
        if isinstance(data, bool):
            return data
        _fail(data, tp)
    if tp is int:
        if isinstance(data, int) and not isinstance(data, bool):
            return data
        _fail(data, tp)
    if tp is float:
        if isinstance(data, int | float) and not isinstance(data, bool):
            return float(data)
        _fail(data, tp)
    if tp is str:
        if isinstance(data, str):
            return data
        _fail(data, tp)
    if tp is bytes:
        if isinstance(data, bytes):
            return data
        if isinstance(data, str):  # JSON keeps bytes as base64
            return base64.b64decode(data.encode("ascii"), validate=True)
        _fail(data, tp)
    if tp in (list, dict, tuple, set, frozenset):
        return _convert_generic(data, tp, (), tp)
    if issubclass(tp, enum.Enum):
        return tp(data)
    if tp in (dt.datetime, dt.date, dt.time):
        if isinstance(data, tp):
            return data
        if isinstance(data, str):
            return tp.fromisoformat(data)
        _fail(data, tp)
    if tp in (uuid.UUID, Decimal):
        if isinstance(data, str):
            return tp(data)
        _fail(data, tp)
    if hasattr(tp, "model_validate"):  # pydantic v2
        try:
            return tp.model_validate(data)
        except Exception as exc:  # pydantic.ValidationError is a ValueError subclass
            raise ValueError(str(exc)) from exc
    if "msgspec" in sys.modules:
        import msgspec

        if issubclass(tp, msgspec.Struct):
            try:
                return msgspec.convert(data, tp)
            except msgspec.ValidationError as exc:
                raise ValueError(str(exc)) from exc
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(data, tp)
    if isinstance(data, tp):
        return data
    _fail(data, tp)


def _convert_dataclass(data: Any, tp: type) -> Any:
    if not isinstance(data, dict):
        _fail(data, tp)
    hints = typing.get_type_hints(tp)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(tp):
        if field.name in data:
            kwargs[field.name] = convert(data[field.name], hints.get(field.name, Any))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise TypeError(f"stored value lacks field {field.name!r} of {tp.__name__}")
    return tp(**kwargs)

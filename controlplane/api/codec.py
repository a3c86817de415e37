"""Dataclass <-> Kubernetes JSON codec.

API objects are plain dataclasses. A field `foo_bar` maps to the JSON key `fooBar`, unless the
field declares its key with `jfield("fooBAR")`. Absent keys decode to the field's default
(usually None, so "unset" and "set to the zero value" stay distinguishable, as with Go
pointers). Keys a class does not model land in its `extra` dict and are written back by
`encode`, so a manifest round-trips without losing fields we do not understand.

`decode(cls, data)` raises DecodeError with a Go-style message when a value has the wrong JSON
type; `encode(obj)` omits None, empty strings, empty lists and empty dicts (Go's omitempty).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, TypeVar

T = TypeVar("T")

# A Kubernetes IntOrString (targetPort, ...): an int, or a string naming a port.
IntOrString = typing.Union[int, str]


def field_type(tp: Any) -> Any:
    """A field's own type, without its None (the codec's fields are all optional). An
    optional IntOrString is a union of int, str and None: IntOrString again, however it
    was written; any other union is Any."""
    if tp is IntOrString:
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        return IntOrString if set(args) == {int, str} else Any
    return tp

_Decoder = Callable[[Any], Any]
_Encoder = Callable[[Any], Any]


class DecodeError(ValueError):
    """A JSON value of the wrong type, reported the way the apiserver's decoder does."""

    def __init__(self, struct: str, path: str, expected: str, value: Any) -> None:
        super().__init__(struct, path)
        self.struct = struct
        self.path = path          # grows outwards as the error passes enclosing objects
        self.expected = expected
        self.got = _json_kind(value)

    def prefix(self, key: str) -> None:
        self.path = f"{key}.{self.path}" if self.path else key

    def __str__(self) -> str:
        return f"json: cannot unmarshal {self.got} into Go struct field {self.struct}.{self.path} of type {self.expected}"


def jfield(json_name: str, default: Any = None, **kwargs: Any) -> Any:
    """A dataclass field whose JSON key is `json_name` (for keys like `clusterIP`)."""
    if "default_factory" in kwargs:
        return dataclasses.field(metadata={"json": json_name}, **kwargs)
    return dataclasses.field(default=default, metadata={"json": json_name}, **kwargs)


def extra_field() -> Any:
    """The catch-all for unknown keys; every codec dataclass has one named `extra`."""
    return dataclasses.field(default_factory=dict, repr=False, compare=True)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


def _go_type(tp: Any) -> str:
    tp = field_type(tp)
    if tp is Any:
        return "interface {}"
    if tp is str:
        return "string"
    if tp is bool:
        return "bool"
    if tp is int:
        return "int32"
    if tp is float:
        return "float64"
    if tp is IntOrString:
        return "intstr.IntOrString"
    origin = typing.get_origin(tp)
    if origin is list:
        return "[]" + _go_type(typing.get_args(tp)[0])
    if origin is dict:
        return "map[string]" + _go_type(typing.get_args(tp)[1])
    if dataclasses.is_dataclass(tp):
        return tp.__name__
    return "interface {}"


class _Plan:
    """Per-class decode/encode tables, built once from the type hints."""

    __slots__ = ("cls", "by_key", "fields", "has_extra")

    def __init__(self, cls: type) -> None:
        self.cls = cls
        hints = typing.get_type_hints(cls)
        self.by_key: dict[str, tuple[str, _Decoder]] = {}
        self.fields: list[tuple[str, str, _Encoder]] = []
        self.has_extra = False
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                self.has_extra = True
                continue
            key = f.metadata.get("json", camel(f.name))
            tp = hints[f.name]
            self.by_key[key] = (f.name, _decoder(tp, cls.__name__))
            self.fields.append((f.name, key, _encoder(tp)))


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _Plan(cls)
    return plan


def _decoder(tp: Any, struct: str) -> _Decoder:
    """A one-argument converter for values of type `tp`; raises DecodeError (with an empty
    path that enclosing objects extend) on a JSON type mismatch. Every converter maps a JSON
    null to None (all modelled fields are optional), so Optional[...] needs no extra layer."""
    tp = field_type(tp)
    if tp is Any:
        return lambda v: v
    if tp is IntOrString:
        def dec_intstr(v: Any) -> Any:
            if v is None:
                return None
            if v.__class__ is float and v.is_integer():
                return int(v)   # YAML's 8080.0: kubectl's YAML-to-JSON writes it as 8080
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise DecodeError(struct, "", "intstr.IntOrString", v)
            return v
        return dec_intstr
    origin = typing.get_origin(tp)
    if tp is str:
        def dec_str(v: Any) -> Any:
            if v.__class__ is str or v is None:
                return v
            if not isinstance(v, str):
                raise DecodeError(struct, "", "string", v)
            return v
        return dec_str
    if tp is bool:
        def dec_bool(v: Any) -> Any:
            if v is None or v.__class__ is bool:
                return v
            raise DecodeError(struct, "", "bool", v)
        return dec_bool
    if tp is int:
        def dec_int(v: Any) -> Any:
            if v.__class__ is int or v is None:
                return v
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
                raise DecodeError(struct, "", "int32", v)
            return int(v)
        return dec_int
    if tp is float:
        def dec_float(v: Any) -> Any:
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DecodeError(struct, "", "float64", v)
            return float(v)
        return dec_float
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        go = _go_type(tp)
        if item_tp is str:
            def dec_str_list(v: Any) -> Any:
                if v is None:
                    return None
                if v.__class__ is not list or any(x.__class__ is not str for x in v):
                    if not isinstance(v, list):
                        raise DecodeError(struct, "", go, v)
                    bad = next(x for x in v if not isinstance(x, str))
                    raise DecodeError(struct, "", "string", bad)
                return list(v)
            return dec_str_list
        item = _decoder(item_tp, struct)

        def dec_list(v: Any) -> Any:
            if v is None:
                return None
            if not isinstance(v, list):
                raise DecodeError(struct, "", go, v)
            return [item(x) for x in v]
        return dec_list
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        go = _go_type(tp)
        if val_tp is Any:
            def dec_any_dict(v: Any) -> Any:
                if v is None:
                    return None
                if not isinstance(v, dict):
                    raise DecodeError(struct, "", go, v)
                return dict(v)
            return dec_any_dict
        val = _decoder(val_tp, struct)

        def dec_dict(v: Any) -> Any:
            if v is None:
                return None
            if not isinstance(v, dict):
                raise DecodeError(struct, "", go, v)
            return {str(k): val(x) for k, x in v.items()}
        return dec_dict
    if dataclasses.is_dataclass(tp):
        def dec_obj(v: Any) -> Any:
            if v is None:
                return None
            if v.__class__ is not dict and not isinstance(v, dict):
                raise DecodeError(struct, "", tp.__name__, v)
            return _decode_obj(tp, v)
        return dec_obj
    raise TypeError(f"codec: unsupported field type {tp!r} in {struct}")


def _encoder(tp: Any) -> _Encoder:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _encoder(args[0])
        return _encode_any
    if origin is list:
        item = _encoder(typing.get_args(tp)[0])
        return lambda v: [item(x) for x in v]
    if origin is dict:
        val = _encoder(typing.get_args(tp)[1])
        return lambda v: {k: val(x) for k, x in v.items()}
    if dataclasses.is_dataclass(tp):
        return encode
    if tp in (str, int, bool, float):
        return lambda v: v
    return _encode_any


def _encode_any(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return encode(v)
    if isinstance(v, list):
        return [_encode_any(x) for x in v]
    if isinstance(v, dict):
        return {k: _encode_any(x) for k, x in v.items()}
    return v


def _decode_obj(cls: type[T], data: dict) -> T:
    plan = _PLANS.get(cls) or _plan(cls)
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] | None = None
    by_key = plan.by_key
    for key, value in data.items():
        entry = by_key.get(key)
        if entry is None:
            if extra is None:
                extra = {}
            extra[key] = value
            continue
        attr, dec = entry
        try:
            kwargs[attr] = dec(value)
        except DecodeError as exc:
            exc.prefix(key)
            raise
    if extra and plan.has_extra:
        kwargs["extra"] = extra
    return cls(**kwargs)


def decode(cls: type[T], data: dict) -> T:
    """Build a `cls` from a JSON-shaped dict; raises DecodeError on a mistyped value."""
    if not isinstance(data, dict):
        raise DecodeError(cls.__name__, "", cls.__name__, data)
    fast = _COMPILED.get(cls) or compiled(cls)
    try:
        return fast(data)
    except Mismatch:   # a value to convert or report: the generic decoder does that
        return _decode_obj(cls, data)


def encode(obj: Any) -> dict[str, Any]:
    """The JSON-shaped dict of a codec dataclass, with omitempty semantics and extras kept."""
    plan = _plan(type(obj))
    out: dict[str, Any] = {}
    for attr, key, enc in plan.fields:
        value = getattr(obj, attr)
        if value is None:
            continue
        cls = value.__class__
        if cls is str or cls is list or cls is dict:
            if not value:
                continue
            out[key] = enc(value)
        elif cls is int or cls is bool:
            out[key] = value
        else:
            encoded = enc(value)
            if encoded != {}:
                out[key] = encoded
    if plan.has_extra and obj.extra:
        for key, value in obj.extra.items():
            out.setdefault(key, value)
    return out


# The straight-line decoders build on the helpers above, so they are imported last.
from .codec_compile import _COMPILED, Mismatch, compiled  # noqa: E402

"""Straight-line decoders for codec dataclasses, generated once per class.

`compiled(cls)` returns `fn(data: dict) -> cls` that does what `codec._decode_obj` does for
well-typed input, without the per-field decoder calls: each field is one `dict.get` and a
class check, nested dataclasses call their own compiled decoder, and the instance is built
by filling `__dict__` (the codec dataclasses have no `__post_init__` and are not frozen).

Anything the fast path does not take as-is (a mistyped value, a float for an int, a bool
where a string belongs) raises `Mismatch`; `codec.decode` then reruns the generic decoder,
which converts the value or raises the Go-style DecodeError. So results and errors are the
generic decoder's; only the common case is faster.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

from .codec import IntOrString, camel, field_type


class Mismatch(Exception):
    """A value the straight-line decoder does not take as-is; fall back to the generic one."""


_MISSING = object()
_COMPILED: dict[type, Callable[[dict], Any]] = {}


def compiled(cls: type) -> Callable[[dict], Any]:
    fn = _COMPILED.get(cls)
    if fn is None:
        fn = _COMPILED[cls] = _compile(cls)
    return fn


def _mismatch(*_: Any) -> Any:
    raise Mismatch


def _nested(cls: type) -> Callable[[dict], Any]:
    """The compiled decoder of a field's class (the codec's types do not refer back to
    their containers, so compiling depth-first terminates)."""
    return compiled(cls)


def _value_code(tp: Any, var: str, env: dict[str, Any], lines: list[str], indent: str) -> None:
    """Append code that checks/converts `var` (known not to be missing) in place."""
    tp = field_type(tp)
    if tp is Any:
        return
    if tp is IntOrString:
        lines.append(f"{indent}if {var}.__class__ is not int and {var}.__class__ is not str and {var} is not None: _mm()")
        return
    if tp in (str, bool, int, float):
        env[f"_t_{tp.__name__}"] = tp
        lines.append(f"{indent}if {var}.__class__ is not _t_{tp.__name__} and {var} is not None: _mm()")
        return
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        item_tp = field_type(item_tp)
        lines.append(f"{indent}if {var} is not None:")
        lines.append(f"{indent}    if {var}.__class__ is not list: _mm()")
        if item_tp is str:
            lines.append(f"{indent}    for _x in {var}:")
            lines.append(f"{indent}        if _x.__class__ is not str: _mm()")
            lines.append(f"{indent}    {var} = list({var})")
        elif dataclasses.is_dataclass(item_tp):
            name = f"_d_{item_tp.__name__}"
            env[name] = _nested(item_tp)
            lines.append(f"{indent}    {var} = [{name}(_x) if _x.__class__ is dict else _none(_x) for _x in {var}]")
        elif item_tp is Any:
            lines.append(f"{indent}    {var} = list({var})")
        else:
            lines.append(f"{indent}    _mm()")   # rare shapes: let the generic decoder do them
        return
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        val_tp = field_type(val_tp)
        lines.append(f"{indent}if {var} is not None:")
        lines.append(f"{indent}    if {var}.__class__ is not dict: _mm()")
        if val_tp is str:
            lines.append(f"{indent}    for _x in {var}.values():")
            lines.append(f"{indent}        if _x.__class__ is not str and _x is not None: _mm()")
        elif val_tp is not Any:
            lines.append(f"{indent}    _mm()")
        lines.append(f"{indent}    {var} = dict({var})")
        return
    if dataclasses.is_dataclass(tp):
        name = f"_d_{tp.__name__}"
        env[name] = _nested(tp)
        lines.append(f"{indent}if {var}.__class__ is dict: {var} = {name}({var})")
        lines.append(f"{indent}elif {var} is not None: _mm()")
        return
    raise TypeError(f"codec: unsupported field type {tp!r}")


def _none(v: Any) -> None:
    if v is not None:
        raise Mismatch
    return None


def _compile(cls: type) -> Callable[[dict], Any]:
    if cls.__dataclass_params__.frozen or hasattr(cls, "__post_init__"):  # type: ignore[attr-defined]
        raise TypeError(f"codec: {cls.__name__} is frozen or has __post_init__")
    hints = typing.get_type_hints(cls)
    env: dict[str, Any] = {"_cls": cls, "_new": object.__new__, "_M": _MISSING, "_mm": _mismatch, "_none": _none}
    lines = ["def decode(d):"]
    known: list[str] = []
    slots: list[tuple[str, str]] = []           # (attribute, local variable)
    checks: list[str] = []
    has_extra = False
    for i, f in enumerate(dataclasses.fields(cls)):
        var = f"v{i}"
        if f.name == "extra":
            has_extra = True
            slots.append((f.name, "_extra"))
            continue
        key = f.metadata.get("json", camel(f.name))
        known.append(key)
        slots.append((f.name, var))
        if f.default is not dataclasses.MISSING:
            env[f"_def{i}"] = f.default
            lines.append(f"    {var} = _def{i}")
        elif f.default_factory is not dataclasses.MISSING:
            env[f"_fac{i}"] = f.default_factory
            lines.append(f"    {var} = _M")
            checks.append(f"    if {var} is _M: {var} = _fac{i}()")
        else:
            raise TypeError(f"codec: {cls.__name__}.{f.name} has no default")
    lines.append("    _extra = None")
    lines.append("    for k, v in d.items():")
    first = True
    for i, f in enumerate(dataclasses.fields(cls)):
        if f.name == "extra":
            continue
        key = f.metadata.get("json", camel(f.name))
        lines.append(f"        {'if' if first else 'elif'} k == {key!r}:")
        first = False
        body: list[str] = []
        _value_code(hints[f.name], "v", env, body, "            ")
        lines.extend(body)
        lines.append(f"            v{i} = v")
    lines.append("        else:")
    lines.append("            if _extra is None: _extra = {}")
    lines.append("            _extra[k] = v")
    lines.extend(checks)
    env["_known"] = frozenset(known)
    if has_extra:
        env["_extra_factory"] = dict
        lines.append("    if _extra is None: _extra = {}")
    lines.append("    o = _new(_cls)")
    lines.append("    o.__dict__ = {" + ", ".join(f"{attr!r}: {var}" for attr, var in slots) + "}")
    lines.append("    return o")
    exec(compile("\n".join(lines), f"<codec decoder for {cls.__name__}>", "exec"), env)
    return env["decode"]

"""The wire's types: ext codes, tags and the registry of named types (DESIGN.md §8, "Wire").

The codec in :mod:`._wire`, whose docstring has the format table, writes a
list, a set, a registered dataclass and an exception as an array headed by an
ext 4-7 *tag*. This module holds the ext codes, what each tag is written as
and what it builds, and the registry of the types that cross by name.

The registry
------------

:func:`message` registers a frozen dataclass or an Exception subclass under a
wire name, ``module.qualname`` unless told otherwise. metakit's system
messages (:class:`~metakit.Down`, :class:`~metakit.Exit`,
:class:`~metakit.EventMessage`, :class:`~metakit.NodeDown`) and the
exceptions of :mod:`metakit.errors` are registered at import, as
``metakit.messages.<name>`` and ``metakit.errors.<name>``. The rules:

* A name belongs to one class and is never a builtin exception's; a class has
  one name (registering it again under that name does nothing).
* A dataclass must be frozen, and its ``__init__`` must take exactly its init
  fields (checked at registration, not when a peer's message fails to
  build). It crosses as those fields in order and is rebuilt by position (by
  keyword if a field is keyword-only). Its ext 6 tag and field reader
  (``_MESSAGE_TYPES``) and its builder (``_MESSAGE_TAGS``) are made once, here.
* An exception crosses as its registered name (``module.qualname`` if it has
  none) with its ``args`` and ``str()``. One of a registered type or a builtin
  Exception subclass is rebuilt as ``cls(*args)``; any other type, a
  BaseException that is not an Exception, or a constructor that refuses the
  args arrives as :class:`~metakit.RemoteError` (:func:`decode_exception`).
  Decoding never imports a module named by the peer.

``_wire`` imports this module. This module imports ``_wire`` only when a
peer's tagged array does not build, to raise its
:class:`~metakit.cluster._wire.WireError`.
"""

from __future__ import annotations

import builtins
import dataclasses
import inspect
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final, TypeVar, final, overload

import msgpack  # type: ignore[import-untyped, unused-ignore]

from .. import errors
from ..errors import RemoteError
from ..messages import Down, EventMessage, Exit, NodeDown

__all__ = ["decode_exception", "message"]

_C = TypeVar("_C")

# Ext codes (the format table in ``_wire``'s docstring). Never renumber: nodes
# of different versions must read each other.
_PID: Final = 1
_ALIAS: Final = 2
_REF: Final = 3
_LIST: Final = 4
_SET: Final = 5
_MESSAGE: Final = 6
_EXCEPTION: Final = 7


def _type_label(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _utf8(text: str) -> str:
    """``text``, with anything UTF-8 cannot carry (lone surrogates) escaped."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _cannot(obj: object) -> str:
    if type(obj) is int:  # not str(obj): an int of 5000 digits refuses that
        return f"cannot encode int: {obj.bit_length()} bits is outside [-2**63, 2**64)"
    cls = type(obj)
    if dataclasses.is_dataclass(cls):
        return (
            f"cannot encode {_type_label(cls)}: a dataclass that is not registered "
            "with @metakit.cluster.message"
        )
    return (
        f"cannot encode {_type_label(cls)}: not a wire type (None, bool, int, float, str, "
        "bytes, list, tuple, dict, set, PID, Alias, Ref, registered messages, exceptions)"
    )


def _peer_error(text: str) -> Exception:
    """A :class:`~metakit.cluster._wire.WireError`, imported on use (``_wire`` imports us)."""
    from ._wire import WireError

    return WireError(text)


# --- the tags ---------------------------------------------------------------


@final
class _Tag:
    """What ext 4-7 decode to: a marker that ``list_hook`` turns into its value."""

    __slots__ = ("build", "what")

    def __init__(self, what: str, build: Callable[[tuple[Any, ...]], object]) -> None:
        self.what = what
        self.build = build

    def __repr__(self) -> str:
        return f"<wire tag {self.what}>"


@final
class _MessageType:
    """How a registered dataclass is written: its tag and its fields' values."""

    __slots__ = ("tag", "values")

    def __init__(self, tag: Any, values: Callable[[Any], tuple[object, ...]]) -> None:
        self.tag = tag
        self.values = values


def _build_list(items: tuple[Any, ...]) -> object:
    return list(items[1:])


def _build_set(items: tuple[Any, ...]) -> object:
    return set(items[1:])


# --- the registry -----------------------------------------------------------


_NAMES: dict[type, str] = {}
"""Every registered class, to its wire name."""
_CLASSES: dict[str, type] = {}
"""Every wire name, to its registered class."""
_MESSAGE_TYPES: dict[type, _MessageType] = {}
_MESSAGE_TAGS: dict[bytes, _Tag] = {}
_EXCEPTIONS: dict[str, type[Exception]] = {}
_BUILTIN_EXCEPTIONS: Final[dict[str, type[BaseException]]] = {
    name: value
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def _no_fields(obj: object) -> tuple[object, ...]:
    return ()


def _field_reader(names: list[str]) -> Callable[[Any], tuple[object, ...]]:
    if not names:
        return _no_fields
    if len(names) > 1:
        many: Callable[[Any], tuple[object, ...]] = attrgetter(*names)
        return many
    one = attrgetter(names[0])
    return lambda obj: (one(obj),)


def _message_builder(
    cls: type, name: str, names: list[str], by_keyword: bool
) -> Callable[[tuple[Any, ...]], object]:
    size = len(names) + 1

    def build(items: tuple[Any, ...]) -> object:
        if len(items) != size:
            raise _peer_error(f"{name} has {size - 1} fields; the peer sent {len(items) - 1}")
        try:
            if by_keyword:
                return cls(**dict(zip(names, items[1:], strict=True)))
            return cls(*items[1:])
        except Exception as exc:
            raise _peer_error(f"cannot build {name} from the fields the peer sent: {exc}") from exc

    return build


def _register_dataclass(cls: type, name: str, payload: bytes) -> None:
    if not getattr(cls, "__dataclass_params__").frozen:  # noqa: B009 - not typed
        raise TypeError(f"@message needs a frozen dataclass; {_type_label(cls)} is not frozen")
    fields = [field for field in dataclasses.fields(cls) if field.init]
    names = [field.name for field in fields]
    by_keyword = any(field.kw_only for field in fields)
    # Fail here, not on the receiving node: the fields must be what __init__ takes
    # (an InitVar or a hand-written __init__ would break decoding).
    try:
        parameters = list(inspect.signature(cls).parameters)
    except (TypeError, ValueError):  # pragma: no cover - a signature inspect cannot read
        parameters = names
    if (sorted(parameters) != sorted(names)) if by_keyword else (parameters != names):
        raise TypeError(
            f"@message cannot register {_type_label(cls)}: its __init__ takes "
            f"{parameters} but its init fields are {names}"
        )
    _MESSAGE_TYPES[cls] = _MessageType(msgpack.ExtType(_MESSAGE, payload), _field_reader(names))
    _MESSAGE_TAGS[payload] = _Tag(name, _message_builder(cls, name, names, by_keyword))


def _register(cls: type[_C], name: str | None) -> type[_C]:
    if not isinstance(cls, type):
        raise TypeError(f"@message decorates a class, not {cls!r}")
    known = _NAMES.get(cls)
    if known is not None:
        if name is None or name == known:
            return cls
        raise ValueError(f"{_type_label(cls)} is already registered as {known!r}, not {name!r}")
    if name is None:
        name = f"{cls.__module__}.{cls.__qualname__}"
    if type(name) is not str or not name:
        raise TypeError(f"a message name is a non-empty str, not {name!r}")
    holder = _CLASSES.get(name)
    if holder is not None:
        raise ValueError(f"message name {name!r} is already registered for {_type_label(holder)}")
    if name in _BUILTIN_EXCEPTIONS:
        raise ValueError(f"message name {name!r} is the name of a builtin exception")
    try:
        payload = name.encode()
    except UnicodeEncodeError:
        raise ValueError(f"message name {name!r} is not valid UTF-8") from None
    if issubclass(cls, BaseException):
        if not issubclass(cls, Exception):
            raise TypeError(
                f"@message registers Exception subclasses; {_type_label(cls)} is a "
                "BaseException (it arrives as RemoteError anyway)"
            )
        _EXCEPTIONS[name] = cls
    elif dataclasses.is_dataclass(cls):
        _register_dataclass(cls, name, payload)
    else:
        raise TypeError(
            f"@message registers frozen dataclasses and Exception subclasses, "
            f"not {_type_label(cls)}"
        )
    _CLASSES[name] = cls
    _NAMES[cls] = name
    return cls


@overload
def message(cls: type[_C], *, name: str | None = None) -> type[_C]: ...


@overload
def message(cls: None = None, *, name: str | None = None) -> Callable[[type[_C]], type[_C]]: ...


def message(
    cls: type[_C] | None = None, *, name: str | None = None
) -> type[_C] | Callable[[type[_C]], type[_C]]:
    """Let a frozen dataclass or an Exception subclass cross node boundaries.

    Use it bare (``@message``) or with a name (``@message(name="app.Ping")``);
    the class itself is returned unchanged. A dataclass arrives as the same
    class, built from its ``__init__`` fields by position; an exception keeps
    its type (it is rebuilt as ``cls(*exc.args)``) instead of arriving as
    :class:`~metakit.RemoteError`. Every node must register the class under the
    same name, so name it explicitly if its module or qualified name may differ
    between nodes.

    Args:
        cls: the class, when used bare or called directly.
        name: its name on the wire; by default ``f"{cls.__module__}.{cls.__qualname__}"``.

    Error handling:
        :class:`TypeError` for a class that is not a frozen dataclass or an
        Exception subclass. :class:`ValueError` if the name is already taken
        by another class (or is a builtin exception's), or the class is
        already registered under another name. Registering a class again
        under its own name does nothing.
    """
    if cls is None:
        return lambda cls: _register(cls, name)
    return _register(cls, name)


for _system in (Down, Exit, EventMessage, NodeDown):
    _register(_system, f"metakit.messages.{_system.__name__}")
for _name in errors.__all__:
    _error = getattr(errors, _name)
    if isinstance(_error, type) and issubclass(_error, Exception):
        _register(_error, f"metakit.errors.{_name}")
del _system, _name, _error


# --- exceptions -------------------------------------------------------------


def _exception_name_and_text(exc: BaseException) -> tuple[str, str]:
    """The ``type_name`` and ``message`` ``exc`` crosses with, both UTF-8 (see ``_wire``)."""
    cls = type(exc)
    type_name = _utf8(_NAMES.get(cls) or _type_label(cls))
    try:
        text = _utf8(str(exc))
    except Exception:
        text = f"<unprintable {type_name}>"
    return type_name, text


def decode_exception(type_name: str, args: tuple[Any, ...], text: str) -> BaseException:
    """Rebuild an exception another node sent, or a :class:`~metakit.RemoteError`.

    A builtin Exception subclass, one of ``metakit.errors`` or a registered
    type is rebuilt as ``cls(*args)``. An unknown type, a BaseException that
    is not an Exception (``KeyboardInterrupt``, ``SystemExit``), or one whose
    constructor refuses ``args`` becomes ``RemoteError(type_name, text)``.
    """
    cls = _EXCEPTIONS.get(type_name)
    if cls is None:
        builtin = _BUILTIN_EXCEPTIONS.get(type_name)
        if builtin is None or not issubclass(builtin, Exception):
            return RemoteError(type_name, text)
        cls = builtin
        if not args and text:
            # The sender dropped args that did not encode; a builtin's str()
            # is its one argument's, so this rebuilds what it printed.
            args = (text,)
    try:
        exc = cls(*args)
    except Exception:
        return RemoteError(type_name, text)
    return exc if isinstance(exc, BaseException) else RemoteError(type_name, text)


def _build_exception(items: tuple[Any, ...]) -> object:
    if len(items) != 4:
        raise _peer_error(f"an exception has 3 parts; the peer sent {len(items) - 1}")
    _, type_name, args, text = items
    if type(type_name) is not str or type(args) is not tuple or type(text) is not str:
        raise _peer_error("an exception is [type_name: str, args: array, message: str]")
    return decode_exception(type_name, args, text)


# The tags of ext 4, 5 and 7, which carry no payload (ext 6's, one per
# registered dataclass, are made by _register_dataclass).
_EMPTY_TAGS: Final = {
    _LIST: _Tag("list", _build_list),
    _SET: _Tag("set", _build_set),
    _EXCEPTION: _Tag("exception", _build_exception),
}
_LIST_TAG: Final = msgpack.ExtType(_LIST, b"")
_SET_TAG: Final = msgpack.ExtType(_SET, b"")
_EXCEPTION_TAG: Final = msgpack.ExtType(_EXCEPTION, b"")

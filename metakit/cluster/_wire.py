"""The msgpack codec for messages that cross a node boundary (DESIGN.md §8, "Wire").

What crosses: ``None``, ``bool``, ``int`` (64-bit), ``float``, ``str``,
``bytes``, ``list``, ``tuple``, ``dict``, ``set``, :class:`~metakit.PID`,
:class:`~metakit.Alias`, :class:`~metakit.Ref`, frozen dataclasses and
exception types registered with :func:`~metakit.cluster.message` (the
registry, with the ext codes and the tags, is :mod:`._types`), and any
exception. Each arrives as the type it left as. Anything else, at any depth,
makes :meth:`Codec.pack` raise :class:`TypeError`; pickle is never used, and
decoding never imports a module named by the peer.

Theory of operation
-------------------

Packing happens in two steps. :meth:`Codec._lower` walks the value in Python,
dispatching on its exact type, and returns a tree made only of what msgpack's
C packer writes natively; the packer (created once, reused) then writes it
in one call. The walk is not optional: even with ``strict_types=True`` the C
packer writes ``bytearray``, ``memoryview``, ``msgpack.ExtType`` and
``msgpack.Timestamp`` natively, so without it those would slip through (and
an ``ExtType`` could forge a PID). Because lowering finishes before packing
starts, the packer is never re-entered, and an exception whose ``args`` do not
encode can still be sent without them.

Unpacking is one ``msgpack.unpackb`` (or one ``Unpacker`` for a batch), whose
``ext_hook`` and ``list_hook`` rebuild the typed values; nothing is decoded
twice. The format, as msgpack sees it:

====================  =====================================================
Python                wire
====================  =====================================================
None, bool, int,      the msgpack native (float64, str as UTF-8, bytes as bin)
float, str, bytes
tuple                 array
dict                  map (keys of any wire type)
list                  array whose first item is ext 4 (empty), then the items
set                   array headed by ext 5 (empty), then the items
registered dataclass  array headed by ext 6 (payload: the registered name in
                      UTF-8), then the ``__init__`` fields in order
exception             array ``[ext 7 (empty), type_name, args, message]``
PID / Alias / Ref     ext 1 / 2 / 3, payload: ``id`` as 8 bytes big-endian
                      signed, then ``node`` in UTF-8
====================  =====================================================

An ext 4-7 anywhere but at the head of an array, any other ext code (msgpack's
timestamp, -1, included), bad UTF-8, a length longer than the data, a map key
that decodes unhashable (a list), or a field count that does not match the
class is a :class:`WireError`.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, TypeVar, final

import msgpack  # type: ignore[import-untyped, unused-ignore]

from ..errors import MetakitError
from ..ids import PID, Alias, Ref
from ._types import (
    _ALIAS,
    _EMPTY_TAGS,
    _EXCEPTION_TAG,
    _LIST_TAG,
    _MESSAGE,
    _MESSAGE_TAGS,
    _MESSAGE_TYPES,
    _PID,
    _REF,
    _SET_TAG,
    _cannot,
    _exception_name_and_text,
    _MessageType,
    _Tag,
    _type_label,
)

__all__ = ["Codec", "WireError"]

_I = TypeVar("_I", PID, Alias, Ref)

DEFAULT_MAX_SIZE: Final = 64 * 1024 * 1024
"""The largest packed value or batch :class:`Codec` decodes unless told otherwise."""

MAX_DEPTH: Final = 256
"""How deeply containers may nest in a packed value (far below msgpack's own 1024)."""

_CACHE_LIMIT: Final = 4096

# Exact types the C packer writes as they are; every other value is lowered.
_SCALARS: Final = frozenset({type(None), bool, int, float, str, bytes})


class WireError(MetakitError, ValueError):
    """Bytes from another node that are not a valid packed value (the peer's fault).

    Raised by :meth:`Codec.unpack` and :meth:`Codec.frames`, never anything
    else, whatever the bytes.
    """


def _too_deep(obj: object) -> TypeError:
    return TypeError(
        f"cannot encode {_type_label(type(obj))}: containers nest deeper than "
        f"{MAX_DEPTH} levels (is it recursive?)"
    )


_ID_CODES: Final[dict[type, int]] = {PID: _PID, Alias: _ALIAS, Ref: _REF}
_unpack_id: Final = struct.Struct(">q").unpack_from
_TIMESTAMP_HEADER: Final = re.compile(rb"[\x04\x08\x0c\xd6\xd7]\xff").search


@final
class _Key:
    """A lowered dict key that is not a scalar (a lowered tuple is an unhashable list).

    Hashed by identity, so distinct keys stay distinct; ``Codec._default``
    hands the packer the value inside.
    """

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


def _parse_id(kind: type[_I], data: bytes, nodes: dict[bytes, str]) -> _I:
    if len(data) < 8:
        raise WireError(f"a {kind.__name__} needs 8 bytes of id; the peer sent {len(data)} bytes")
    raw = data[8:]
    node = nodes.get(raw)
    if node is None:
        try:
            node = sys.intern(raw.decode())
        except UnicodeDecodeError:
            raise WireError(f"the node of a {kind.__name__} is not UTF-8: {raw!r}") from None
        if len(nodes) >= _CACHE_LIMIT:
            nodes.clear()
        nodes[raw] = node
    return kind(node, _unpack_id(data)[0])


def _marked(data: bytes) -> bool:
    """Whether ``data`` may hold a msgpack timestamp (unpackb builds those itself).

    A valid one is ext -1 of 4, 8 or 12 bytes, so its header ends in ``0xff``
    after fixext 4/8 or after a length of 4, 8 or 12; ``255 in data`` (a
    memchr) rules most data out first.
    """
    return 255 in data and _TIMESTAMP_HEADER(data) is not None


def _holds_timestamp(value: object, budget: int) -> bool:
    # Iterative, and bounded by the data length (every decoded object took at
    # least one byte), so neither deep nesting nor a cycle built by a
    # registered class's __init__ can hang or overflow the stack.
    stack: list[Any] = [value]
    while stack:
        budget -= 1
        if budget < 0:
            raise WireError("a decoded value holds more objects than its bytes can encode")
        item = stack.pop()
        cls = type(item)
        if cls is msgpack.Timestamp:
            return True
        if cls is tuple or cls is list or cls is set:
            stack.extend(item)
        elif cls is dict:
            stack.extend(item)
            stack.extend(item.values())
        elif cls in _MESSAGE_TYPES:
            stack.extend(_MESSAGE_TYPES[cls].values(item))
        elif isinstance(item, BaseException):
            stack.extend(item.args)
    return False


def _decode_error(exc: Exception, what: str) -> WireError:
    if isinstance(exc, WireError):
        return exc
    if isinstance(exc, msgpack.ExtraData):
        return WireError(f"{what}: bytes left over after the value")
    if isinstance(exc, UnicodeDecodeError):
        return WireError(f"{what}: a str that is not UTF-8 ({exc.reason})")
    if isinstance(exc, TypeError):  # PyDict_SetItem or set() on a list
        return WireError(f"{what}: {exc} (a map key or set item that cannot be hashed)")
    return WireError(f"{what}: {exc or type(exc).__name__}")


# --- the codec --------------------------------------------------------------


@final
class Codec:
    """Packs values for another node, and unpacks what one sent (see the module docstring).

    Args:
        max_size: the longest ``bytes`` :meth:`unpack` or :meth:`frames`
            accepts; msgpack never allocates past the length of the data.

    Resource handling:
        One ``msgpack.Packer`` and two small caches (decoded PIDs and Aliases,
        encoded ids; each cleared at 4096 entries) per codec. Not thread-safe:
        give each thread its own codec.
    """

    __slots__ = (
        "_aliases",
        "_array_hook",
        "_encoded_ids",
        "_ext_hook",
        "_lowerers",
        "_nodes",
        "_open_tags",
        "_packer",
        "_pids",
        "max_size",
    )

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, not {max_size}")
        self.max_size = max_size
        self._packer: Any = msgpack.Packer(
            default=self._default, use_bin_type=True, strict_types=True, autoreset=True
        )
        self._lowerers: dict[type, Callable[[Any, int], object]] = {
            tuple: self._lower_tuple,
            list: self._lower_list,
            dict: self._lower_dict,
            set: self._lower_set,
            PID: self._lower_id,
            Alias: self._lower_id,
            Ref: self._lower_id,
        }
        self._encoded_ids: dict[int, tuple[type, str, Any]] = {}
        self._pids: dict[bytes, PID] = {}
        self._aliases: dict[bytes, Alias] = {}
        self._nodes: dict[bytes, str] = {}  # node names, decoded and interned once
        # ext 4-7 decoded and not yet claimed by list_hook as an array's head:
        # non-zero after a value means one stood elsewhere (DESIGN.md §8: bad
        # bytes are a WireError, never a stray object).
        self._open_tags = 0
        self._ext_hook = self._ext
        self._array_hook = self._array

    # Packing ---------------------------------------------------------------

    def pack(self, obj: object) -> bytes:
        """Encode ``obj`` for another node.

        Error handling:
            :class:`TypeError`, naming the type, if ``obj`` holds anything that
            is not a wire type, at any depth (a ``frozenset``, a ``bytearray``,
            a dict subclass, an ``IntEnum``, an unregistered dataclass, an int
            outside 64 bits, a str that is not UTF-8, nesting deeper than
            :data:`MAX_DEPTH` ...). Nothing is half-written: the codec is
            ready for the next value.
        """
        try:
            lowered = obj if type(obj) in _SCALARS else self._lower(obj, 0)
            data: bytes = self._packer.pack(lowered)
        except TypeError:
            raise
        except RecursionError as exc:
            raise TypeError(f"cannot encode {_type_label(type(obj))}: nested too deeply") from exc
        except UnicodeEncodeError as exc:
            raise TypeError(f"cannot encode a str that is not UTF-8 ({exc.reason})") from exc
        except (ValueError, OverflowError) as exc:  # msgpack's limits, e.g. 2**32 items
            raise TypeError(f"cannot encode {_type_label(type(obj))}: {exc}") from exc
        return data

    def _default(self, obj: object) -> object:
        # The packer's fallback: reached only by lowered keys and by ints
        # outside 64 bits (strict_types sends those here, not OverflowError).
        if type(obj) is _Key:
            return obj.value
        raise TypeError(_cannot(obj))

    def _lower(self, obj: object, depth: int) -> object:
        """``obj`` as objects the C packer writes natively (exact scalars, lists,
        dicts, ExtType, _Key)."""
        lowerer = self._lowerers.get(type(obj))
        if lowerer is not None:
            return lowerer(obj, depth)
        spec = _MESSAGE_TYPES.get(type(obj))
        if spec is not None:
            return self._lower_message(obj, spec, depth)
        if isinstance(obj, BaseException):
            return self._lower_exception(obj, depth)
        if type(obj) in _SCALARS:
            return obj
        raise TypeError(_cannot(obj))

    def _lower_tuple(self, obj: Iterable[object], depth: int) -> list[object]:
        if depth >= MAX_DEPTH:
            raise _too_deep(obj)
        depth += 1
        scalars, lowerers, lower = _SCALARS, self._lowerers, self._lower
        # A loop, not a comprehension (on 3.11 that builds a function per
        # call), and the dispatch inlined for the common kinds.
        out: list[object] = []
        append = out.append
        for item in obj:
            cls = type(item)
            if cls in scalars:
                append(item)
            else:
                lowerer = lowerers.get(cls)
                append(lower(item, depth) if lowerer is None else lowerer(item, depth))
        return out

    def _lower_list(self, obj: list[object], depth: int) -> list[object]:
        out = self._lower_tuple(obj, depth)
        out.insert(0, _LIST_TAG)
        return out

    def _lower_set(self, obj: set[object], depth: int) -> list[object]:
        out = self._lower_tuple(obj, depth)
        out.insert(0, _SET_TAG)
        return out

    def _lower_message(self, obj: object, spec: _MessageType, depth: int) -> list[object]:
        out = self._lower_tuple(spec.values(obj), depth)
        out.insert(0, spec.tag)
        return out

    def _lower_dict(self, obj: dict[object, object], depth: int) -> dict[object, object]:
        if depth >= MAX_DEPTH:
            raise _too_deep(obj)
        depth += 1
        lower = self._lower
        out: dict[object, object] = {}
        for key, value in obj.items():
            if type(key) not in _SCALARS:
                key = lower(key, depth)
                if type(key) is not msgpack.ExtType:  # a PID is hashable as it is
                    key = _Key(key)
            out[key] = value if type(value) in _SCALARS else lower(value, depth)
        return out

    def _lower_id(self, obj: PID | Alias | Ref, depth: int) -> object:
        node, ident = obj.node, obj.id
        if type(ident) is not int or type(node) is not str:
            raise TypeError(
                f"cannot encode a {type(obj).__name__} whose node is a {type(node).__name__} "
                f"and id a {type(ident).__name__} (a str and an int)"
            )
        # Ids are unique across the three kinds: one cache, keyed by the int.
        hit = self._encoded_ids.get(ident)
        if hit is not None and hit[0] is type(obj) and hit[1] == node:
            return hit[2]
        try:
            payload = ident.to_bytes(8, "big", signed=True) + node.encode()
        except OverflowError:
            raise TypeError(
                f"cannot encode a {type(obj).__name__} whose id is over 64 bits"
            ) from None
        except UnicodeEncodeError:
            raise TypeError(
                f"cannot encode a {type(obj).__name__} whose node is not UTF-8"
            ) from None
        ext = msgpack.ExtType(_ID_CODES[type(obj)], payload)
        if len(self._encoded_ids) >= _CACHE_LIMIT:
            self._encoded_ids.clear()
        self._encoded_ids[ident] = (type(obj), node, ext)
        return ext

    def _lower_exception(self, exc: BaseException, depth: int) -> list[object]:
        # Never raises TypeError (DESIGN.md §8: an exit reason always crosses):
        # args that do not encode are dropped, the type name and str() stay.
        type_name, text = _exception_name_and_text(exc)
        args: list[object] = []
        try:
            args = self._lower_tuple(exc.args, depth + 1)
            # Lowering checks types; this checks what only the C packer does
            # (int range, UTF-8). The packer is idle: lowering runs before it.
            self._packer.pack(args)
        except Exception:
            args = []
        return [_EXCEPTION_TAG, type_name, args, text]

    # Unpacking -------------------------------------------------------------

    def unpack(self, data: bytes) -> object:
        """Decode one value :meth:`pack` wrote.

        Error handling:
            :class:`WireError` for anything that is not exactly one valid
            value (trailing bytes included), whatever the bytes; never another
            exception, never a hang.
        """
        if len(data) > self.max_size:
            raise WireError(f"{len(data)} bytes exceeds max_size={self.max_size}")
        try:
            value = msgpack.unpackb(
                data,
                use_list=False,
                raw=False,
                strict_map_key=False,
                ext_hook=self._ext_hook,
                list_hook=self._array_hook,
            )
        except Exception as exc:
            self._open_tags = 0
            raise _decode_error(exc, f"cannot decode {len(data)} bytes") from exc
        self._check(value, len(data) + 16 if _marked(data) else 0)
        return value

    def frames(self, data: bytes) -> Iterator[object]:
        """Decode a batch: values :meth:`pack` wrote, concatenated, one by one.

        Error handling:
            A truncated tail or garbage raises :class:`WireError` after every
            good value before it has been yielded, so nothing that arrived
            whole is lost.
        """
        size = len(data)
        if size > self.max_size:
            raise WireError(f"a batch of {size} bytes exceeds max_size={self.max_size}")
        if not size:
            return
        unpacker = msgpack.Unpacker(
            use_list=False,
            raw=False,
            strict_map_key=False,
            ext_hook=self._ext_hook,
            list_hook=self._array_hook,
            max_buffer_size=size,
        )
        unpacker.feed(data)
        budget = size + 16 if _marked(data) else 0
        count = end = 0
        while True:
            try:
                value = next(unpacker)
            except StopIteration:
                break
            except Exception as exc:
                self._open_tags = 0
                raise _decode_error(exc, f"value {count} of the batch") from exc
            self._check(value, budget)
            count += 1
            # After a value cut short tell() counts its bytes too: note it here.
            end = unpacker.tell()
            yield value
        if end != size:
            raise WireError(
                f"the batch ends inside a value: {size - end} bytes after {count} values"
            )

    def _check(self, value: object, budget: int) -> None:
        # budget: 0 unless the data may hold a timestamp (see _marked).
        if self._open_tags:
            self._open_tags = 0
            raise WireError("an ext 4-7 tag that does not head an array")
        if budget and _holds_timestamp(value, budget):
            raise WireError("a msgpack timestamp (ext -1), which is not a wire type")

    def _ext(self, code: int, data: bytes) -> object:
        if code == _PID:
            pid = self._pids.get(data)
            if pid is None:
                pids = self._pids
                if len(pids) >= _CACHE_LIMIT:
                    pids.clear()
                pid = pids[data] = _parse_id(PID, data, self._nodes)
            return pid
        if code == _MESSAGE:
            tag = _MESSAGE_TAGS.get(data)
            if tag is None:
                raise WireError(f"unknown message type {data.decode(errors='replace')!r}")
            self._open_tags += 1
            return tag
        empty = _EMPTY_TAGS.get(code)
        if empty is not None:
            if data:
                raise WireError(
                    f"ext {code} ({empty.what}) carries {len(data)} bytes; none expected"
                )
            self._open_tags += 1
            return empty
        if code == _ALIAS:
            alias = self._aliases.get(data)
            if alias is None:
                aliases = self._aliases
                if len(aliases) >= _CACHE_LIMIT:
                    aliases.clear()
                alias = aliases[data] = _parse_id(Alias, data, self._nodes)
            return alias
        if code == _REF:  # unique per monitor: not worth caching
            return _parse_id(Ref, data, self._nodes)
        raise WireError(f"unknown ext type {code}")

    def _array(self, items: tuple[Any, ...]) -> object:
        if items:
            head = items[0]
            if type(head) is _Tag:
                self._open_tags -= 1
                return head.build(items)
        return items


_SHARED = Codec()


def encode_exception(exc: BaseException) -> object:
    """The wire form of ``exc`` (what :meth:`Codec.pack` writes for it), msgpack-ready.

    ``[ext 7, type_name, args, message]``: ``type_name`` is ``module.qualname``
    (just the name for builtins, the registered name if registered), ``args``
    the lowered ``exc.args`` if they encode and ``[]`` otherwise, ``message``
    ``str(exc)``. Never raises :class:`TypeError`. Uses a codec shared by the
    module: call it from one thread.
    """
    return _SHARED._lower_exception(exc, 0)

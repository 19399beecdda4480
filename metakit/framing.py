"""Sans-I/O framers: turn a byte stream into frames, and frames into bytes.

No I/O here (no ``asyncio``, no ``socket``): the TCP layer (DESIGN.md §5)
feeds each read to a framer and gets back every frame completed so far::

    framer = Line(max_length=4096)
    framer.feed(b"hello\\nwor")   # [b'hello']
    framer.feed(b"ld\\n")         # [b'world']
    framer.encode(b"hi")          # b'hi\\n'

Theory of operation: a framer's only state is a receive buffer (a
``bytearray``) holding the start of a frame that is not complete yet. ``feed``
completes the buffered frame, cuts the following frames straight out of the
new data, and buffers the incomplete rest; each byte is searched or parsed
once, so the cost is linear in the stream's length however it is split. The
constructor arguments are kept as attributes of the same names: treat them
as read-only.

Error handling: a peer that breaks the framing makes ``feed`` raise a
:class:`~metakit.errors.FramingError` (:class:`~metakit.errors.FrameTooLarge`,
:class:`~metakit.errors.FrameDecodeError`). The framer is then broken: its
buffer is dropped and every later ``feed`` raises the same error again. The
frames the failing call had completed before the bad one travel on the
error, as its ``frames`` attribute, so they are not lost. Local misuse
(encoding a frame the peer could not decode) raises a plain ``ValueError``.
"""

from __future__ import annotations

import copyreg
import struct
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, Self, TypeVar, runtime_checkable

import orjson

from metakit.errors import FrameDecodeError, FrameTooLarge, FramingError

__all__ = ["JSON", "Fixed", "Framer", "LengthPrefixed", "Line", "Raw"]

_T = TypeVar("_T")
_Data = bytes | bytearray | memoryview


@runtime_checkable
class Framer(Protocol[_T]):
    """What every framer offers; ``_T`` is the type of its frames.

    Resource handling: a framer holds one connection's receive state. Use one per
    connection; :meth:`clone` makes a fresh one from a configured template.
    """

    @property
    def max_length(self) -> int:
        """The largest frame accepted, in bytes (for :class:`Raw`, the read size)."""
        ...

    @property
    def buffered(self) -> int:
        """How many received bytes wait for the rest of their frame."""
        ...

    def feed(self, data: _Data) -> list[_T]:
        """Take the next bytes; return every frame they complete, in order.

        ``data`` may view a buffer the caller reuses: what is kept is copied, and
        frames are ``bytes`` (or decoded values), never views.

        Raises:
            FramingError: the peer broke the framing; every later call raises it again.
        """
        ...

    def encode(self, frame: _T) -> bytes:
        """Return the bytes that carry ``frame``; ``ValueError`` if it cannot be framed."""
        ...

    def clone(self) -> Self:
        """Return a new framer with the same configuration and an empty buffer."""
        ...


# What a framer's buffer is until it needs one: bytes, so a framer that
# forgot to make its own could never write into another's.
_NO_BUF: bytearray = b""  # type: ignore[assignment]


class _Framer:
    """Shared by the framers: the receive buffer, the sticky error, ``clone`` and ``repr``."""

    __slots__ = ("_buf", "_error")
    _config: ClassVar[tuple[str, ...]] = ()  # the constructor's arguments, kept as attributes

    def __init__(self) -> None:
        # No buffer of its own until a frame is cut across reads: an idle
        # connection's framer holds the shared empty bytes (56 bytes less each).
        self._buf: bytearray = _NO_BUF
        self._error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """How many received bytes wait for the rest of their frame."""
        return len(self._buf)

    def clone(self) -> Self:
        """Return a new framer with the same configuration and an empty buffer."""
        return type(self)(**{name: getattr(self, name) for name in self._config})

    def _own_buf(self) -> bytearray:
        # The first bytes kept for a frame cut across reads: a buffer of its own.
        buf = self._buf
        if buf is _NO_BUF:
            buf = self._buf = bytearray()
        return buf

    def _fail(self, error: FramingError, frames: list[Any]) -> FramingError:
        # Remember the error (the framer is broken from now on) and drop the buffer;
        # the frames completed before it travel on the error.
        self._error = error
        self._buf = _NO_BUF
        error.frames = frames
        return error

    def _raise_again(self) -> None:
        error = self._error
        assert error is not None
        error.frames = []  # delivered with the first raise
        raise error.with_traceback(None)

    def __repr__(self) -> str:
        config = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._config)
        return f"{type(self).__name__}({config})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled and copied by every slot and any __dict__ of a subclass, the
        # same compiled or not (a compiled framer would keep its C fields only).
        state = {
            name: getattr(self, name)
            for name in copyreg._slotnames(type(self))  # type: ignore[attr-defined]
            if hasattr(self, name)
        }
        state.update(getattr(self, "__dict__", {}))
        return _rebuild, (type(self), state)


def _rebuild(cls: type[_Framer], state: dict[str, Any]) -> _Framer:
    """A framer from :meth:`_Framer.__reduce__`: a bare instance given ``state``."""
    framer = cls.__new__(cls)
    for name, value in state.items():
        setattr(framer, name, value)
    return framer


class Raw(_Framer):
    """No framing: every read is a frame (split if longer than ``read_size``), sent as is.

    Args:
        read_size: the largest frame; a longer read (loops read up to 256 KiB
            at a time, TLS may hand over more) is cut into frames of this size.
            It bounds what a connection's high watermark of frames can hold.
    """

    __slots__ = ("max_length", "read_size")
    _config = ("read_size",)

    def __init__(self, *, read_size: int = 65536) -> None:
        super().__init__()
        if read_size < 1:
            raise ValueError(f"read_size must be at least 1, not {read_size}")
        self.read_size = self.max_length = read_size

    def feed(self, data: _Data) -> list[bytes]:
        """Return ``data`` as ``bytes`` in frames of at most ``read_size``; ``[]`` for
        empty data. Never raises."""
        size = self.read_size
        if len(data) <= size:
            return [bytes(data)] if data else []  # bytes(data) is data, for bytes: no copy
        view = memoryview(data)
        return [view[i : i + size].tobytes() for i in range(0, len(view), size)]

    def encode(self, frame: _Data) -> bytes:
        """Return ``frame`` as ``bytes``, unchanged."""
        return bytes(frame)


class Line(_Framer):
    """Frames end with a delimiter (``\\n`` by default), which is not part of the frame.

    Args:
        max_length: the longest line accepted, delimiter excluded.
        delimiter: the bytes that end a line, for example ``b"\\r\\n"``.

    Error handling: :class:`~metakit.errors.FrameTooLarge` as soon as more than
    ``max_length`` bytes are known to belong to one line, before its delimiter
    arrives.
    """

    __slots__ = ("_dlen", "_first", "delimiter", "max_length")
    _config = ("max_length", "delimiter")

    def __init__(self, *, max_length: int = 65536, delimiter: bytes = b"\n") -> None:
        super().__init__()
        if max_length < 0:
            raise ValueError(f"max_length must be at least 0, not {max_length}")
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        self.max_length = max_length
        self.delimiter = bytes(delimiter)
        self._dlen = len(self.delimiter)
        self._first = self.delimiter[0]

    def feed(self, data: _Data) -> list[bytes]:
        """Return the lines that ``data`` completes, without their delimiter.

        Raises:
            FrameTooLarge: a line is longer than ``max_length``.
        """
        if not self._buf and self._error is None and data.__class__ is bytes:
            # The common case, one whole line per read: check its last byte, then
            # memchr the rest for the delimiter's first byte (no start of one inside).
            end = len(data) - self._dlen
            first = self._first
            if 0 <= end <= self.max_length and data[end] == first:
                frame = data[:end]
                if first not in frame and (self._dlen == 1 or data.startswith(self.delimiter, end)):
                    return [frame]
        return self._feed(data)

    def _feed(self, data: _Data) -> list[bytes]:
        if self._error is not None:
            self._raise_again()
        src = data if type(data) is bytes else bytes(data)
        delim = self.delimiter
        dlen = len(delim)
        max_length = self.max_length
        buf = self._buf
        frames: list[bytes] = []
        pos = 0  # where the next line starts in src
        if buf:
            # The buffer holds no delimiter, but one may straddle it and src: search
            # from the last len(delim) - 1 buffered bytes on.
            old = len(buf)
            buf += src
            idx = buf.find(delim, max(old - dlen + 1, 0))
            if idx < 0:
                self._check_partial(buf, frames)
                return frames
            if idx > max_length:
                raise self._fail(FrameTooLarge(idx, max_length), frames)
            pos = idx + dlen - old
            del buf[idx:]
            frames.append(bytes(buf))
            buf.clear()
            idx = src.find(delim, pos)
        else:
            idx = src.find(delim)
        find = src.find
        while idx >= 0:
            if idx - pos > max_length:
                raise self._fail(FrameTooLarge(idx - pos, max_length), frames)
            frames.append(src[pos:idx])
            pos = idx + dlen
            idx = find(delim, pos)
        if pos < len(src):
            buf = self._own_buf()
            buf += src[pos:] if pos else src
            self._check_partial(buf, frames)
        return frames

    def _check_partial(self, buf: bytearray, frames: list[bytes]) -> None:
        # buf holds the start of a line and no delimiter; past max_length, raise
        # unless the excess may be the first bytes of the delimiter.
        length = len(buf)
        if length <= self.max_length:
            return
        delim = self.delimiter
        for n in range(min(len(delim) - 1, length), 0, -1):
            if buf.endswith(delim[:n]):
                length -= n
                break
        if length > self.max_length:
            raise self._fail(FrameTooLarge(length, self.max_length), frames)

    def encode(self, frame: _Data) -> bytes:
        """Return ``frame`` followed by the delimiter.

        Raises:
            ValueError: ``frame`` is longer than ``max_length``, or contains the
                delimiter (or ends with part of it so that the line would end early).
        """
        # The common case: a bytes frame without the delimiter's first byte cannot
        # hold the delimiter or a start of it (an int `in` is a memchr; bytes `in` is slower).
        if frame.__class__ is bytes and len(frame) <= self.max_length and self._first not in frame:
            return frame + self.delimiter
        line = bytes(frame) + self.delimiter
        length = len(line) - len(self.delimiter)
        if length > self.max_length:
            raise ValueError(f"line of {length} bytes exceeds max_length={self.max_length}")
        if line.find(self.delimiter) != length:
            raise ValueError(f"line contains the delimiter {self.delimiter!r}")
        return line


_HEADER_FORMATS = {1: "B", 2: "H", 4: "I"}


class LengthPrefixed(_Framer):
    """Frames are a header holding the payload's length (unsigned), then the payload.

    Args:
        size: the header's size in bytes: 1, 2 or 4.
        max_length: the longest payload accepted: by default 1 MiB, or the
            largest length the header can express when that is less (a peer
            cannot make the connection buffer more); at most that largest
            length.
        byteorder: ``"big"`` (network order) or ``"little"``.

    Error handling: :class:`~metakit.errors.FrameTooLarge` as soon as a header
    announces more than ``max_length`` bytes, before the payload arrives.
    """

    __slots__ = ("_pending", "_struct", "byteorder", "max_length", "size")
    _config = ("size", "max_length", "byteorder")

    def __init__(
        self,
        size: int = 4,
        *,
        max_length: int | None = None,
        byteorder: Literal["big", "little"] = "big",
    ) -> None:
        super().__init__()
        if size not in _HEADER_FORMATS:
            raise ValueError(f"size must be 1, 2 or 4, not {size!r}")
        if byteorder not in ("big", "little"):
            raise ValueError(f"byteorder must be 'big' or 'little', not {byteorder!r}")
        limit = (1 << (8 * size)) - 1
        if max_length is None:
            max_length = min(limit, 1 << 20)
        elif not 0 <= max_length <= limit:
            raise ValueError(f"max_length must be between 0 and {limit} for size={size}")
        self.size = size
        self.max_length = max_length
        self.byteorder: Literal["big", "little"] = byteorder
        self._struct = struct.Struct((">" if byteorder == "big" else "<") + _HEADER_FORMATS[size])
        # The payload length once the pending frame's header is complete, else -1.
        # While it is known the buffer holds the payload only, not the header.
        self._pending = -1

    @property
    def buffered(self) -> int:
        """How many received bytes (header included) wait for the rest of their frame."""
        return len(self._buf) + (self.size if self._pending >= 0 else 0)

    def feed(self, data: _Data) -> list[bytes]:
        """Return the payloads of the frames that ``data`` completes.

        Raises:
            FrameTooLarge: a header announces more than ``max_length`` bytes.
        """
        if self._error is not None:
            self._raise_again()
        if type(data) is bytearray:
            data = memoryview(data)  # slice it without copying twice
        end = len(data)
        size = self.size
        max_length = self.max_length
        buf = self._buf
        frames: list[bytes] = []
        pos = 0  # where the next frame starts in data
        if buf or self._pending >= 0:
            length = self._pending
            if length < 0:
                pos = size - len(buf)
                buf += data[:pos]
                if len(buf) < size:
                    return frames
                (length,) = self._struct.unpack(buf)
                if length > max_length:
                    raise self._fail(FrameTooLarge(length, max_length), frames)
                buf.clear()
            stop = pos + length - len(buf)
            buf += data[pos:stop]
            if stop > end:
                self._pending = length
                return frames
            frames.append(bytes(buf))
            buf.clear()
            self._pending = -1
            pos = stop
        unpack_from = self._struct.unpack_from
        while end - pos >= size:
            (length,) = unpack_from(data, pos)
            if length > max_length:
                raise self._fail(FrameTooLarge(length, max_length), frames)
            start = pos + size
            pos = start + length
            if pos > end:
                self._pending = length
                buf = self._own_buf()
                buf += data[start:]
                return frames
            frames.append(bytes(data[start:pos]))
        if pos < end:
            buf = self._own_buf()
            buf += data[pos:]
        return frames

    def encode(self, frame: _Data) -> bytes:
        """Return the header followed by ``frame``.

        Raises:
            ValueError: ``frame`` is longer than ``max_length`` (which the header
                can always express).
        """
        length = len(frame) if type(frame) is not memoryview else frame.nbytes
        if length > self.max_length:
            raise ValueError(f"payload of {length} bytes exceeds max_length={self.max_length}")
        return self._struct.pack(length) + frame


class Fixed(_Framer):
    """Frames of exactly ``length`` bytes each.

    Args:
        length: the size of every frame, at least 1.
    """

    __slots__ = ("length", "max_length")
    _config = ("length",)

    def __init__(self, length: int) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"length must be at least 1, not {length}")
        self.length = self.max_length = length

    def feed(self, data: _Data) -> list[bytes]:
        """Return the frames that ``data`` completes. Never raises."""
        if type(data) is bytearray:
            data = memoryview(data)  # slice it without copying twice
        length = self.length
        buf = self._buf
        frames: list[bytes] = []
        pos = 0
        if buf:
            pos = length - len(buf)
            buf += data[:pos]
            if len(buf) < length:
                return frames
            frames.append(bytes(buf))
            buf.clear()
        end = len(data)
        stop = end - (end - pos) % length
        frames += [bytes(data[i : i + length]) for i in range(pos, stop, length)]
        if stop < end:
            buf = self._own_buf()
            buf += data[stop:]
        return frames

    def encode(self, frame: _Data) -> bytes:
        """Return ``frame`` as ``bytes``.

        Raises:
            ValueError: ``frame`` is not exactly ``length`` bytes long.
        """
        frame = bytes(frame)
        if len(frame) != self.length:
            raise ValueError(f"frame of {len(frame)} bytes, expected exactly {self.length}")
        return frame


class JSON(_Framer):
    """JSON values (with orjson), each in one frame of an inner framer.

    Args:
        inner: the framer that cuts the stream into frames; by default
            ``Line(max_length=1 << 20)`` (orjson never writes a raw newline).

    Error handling: :class:`~metakit.errors.FrameDecodeError` (caused by orjson's
    error) for a frame that is not valid JSON, and whatever ``inner`` raises.
    """

    __slots__ = ("inner",)
    _config = ("inner",)

    def __init__(self, inner: Framer[bytes] | None = None) -> None:
        super().__init__()
        self.inner: Framer[bytes] = Line(max_length=1 << 20) if inner is None else inner

    @property
    def max_length(self) -> int:
        """The inner framer's ``max_length``."""
        return self.inner.max_length

    @property
    def buffered(self) -> int:
        """The inner framer's ``buffered``."""
        return self.inner.buffered

    def feed(self, data: _Data) -> list[Any]:
        """Return the decoded values of the frames that ``data`` completes.

        Raises:
            FrameDecodeError: a frame is not valid JSON.
            FramingError: the inner framer raised it.
        """
        if self._error is not None:
            self._raise_again()
        try:
            frames = self.inner.feed(data)
        except FramingError as exc:
            exc.frames = self._decode(exc.frames)  # a decode error here wins
            self._error = exc
            raise
        return self._decode(frames)

    def _decode(self, frames: list[bytes]) -> list[Any]:
        values: list[Any] = []
        for frame in frames:
            try:
                values.append(orjson.loads(frame))
            except orjson.JSONDecodeError as exc:
                error = FrameDecodeError(f"invalid JSON in a frame: {exc}")
                error.frames = values
                self._error = error
                raise error from exc
        return values

    def encode(self, frame: Any) -> bytes:
        """Return ``frame`` serialized with ``orjson.dumps`` and framed by ``inner``.

        Raises:
            TypeError: orjson cannot serialize ``frame`` (``orjson.JSONEncodeError``).
            ValueError: ``inner`` refused the serialized frame.
        """
        return self.inner.encode(orjson.dumps(frame))

    def clone(self) -> Self:
        """Return a new :class:`JSON` around a clone of ``inner``."""
        return type(self)(self.inner.clone())


if TYPE_CHECKING:  # mypy checks that each framer satisfies the protocol
    _raw: Framer[bytes] = Raw()
    _line: Framer[bytes] = Line()
    _length_prefixed: Framer[bytes] = LengthPrefixed()
    _fixed: Framer[bytes] = Fixed(1)
    _json: Framer[Any] = JSON()

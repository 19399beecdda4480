"""Tests for metakit.framing: every framer, every split of the input."""

from __future__ import annotations

import ast
import copy
import itertools
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metakit import framing
from metakit.errors import FrameDecodeError, FrameTooLarge, FramingError
from metakit.framing import JSON, Fixed, Framer, LengthPrefixed, Line, Raw

# Keep hypothesis quick and stateless (no example database in the work tree).
fast = settings(max_examples=60, deadline=None, database=None)


def feed_chunks(framer: Framer[Any], chunks: list[bytes]) -> list[Any]:
    """Feed each chunk, as a memoryview of one reused buffer, and collect the frames."""
    scratch = bytearray(max((len(c) for c in chunks), default=0) + 8)
    frames: list[Any] = []
    for chunk in chunks:
        scratch[: len(chunk)] = chunk
        frames += framer.feed(memoryview(scratch)[: len(chunk)])
        scratch[:] = b"\xaa" * len(scratch)  # the caller reuses its buffer at once
    return frames


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


# A framer factory and frames it must carry, for the exhaustive split tests.
CASES: list[tuple[str, Callable[[], Framer[Any]], list[Any]]] = [
    ("line", Line, [b"hello", b"", b"world \r", b"x" * 40]),
    (
        "line-crlf",
        lambda: Line(max_length=50, delimiter=b"\r\n"),
        [b"a\rb\nc", b"", b"\r", b"\n", b"tail\n"],
    ),
    ("line-abab", lambda: Line(delimiter=b"abab"), [b"aba", b"ba", b"", b"xa", b"b", b"abba"]),
    ("lp-1", lambda: LengthPrefixed(1), [b"", b"a", b"\x00" * 255, b"xyz"]),
    ("lp-2-little", lambda: LengthPrefixed(2, byteorder="little"), [b"q" * 300, b"", b"\n"]),
    ("lp-4", LengthPrefixed, [b"abc", b"", b"\xff" * 17]),
    ("fixed-3", lambda: Fixed(3), [b"abc", b"\x00\x01\x02", b"\n\n\n"]),
    ("fixed-1", lambda: Fixed(1), [b"a", b"b", b"\x00"]),
    ("json", JSON, [{"a": 1, "b": [1, 2, "x\ny"]}, [], "s", 3, None, True, 2.5]),
    (
        "json-lp",
        lambda: JSON(LengthPrefixed(2)),
        [{"k": "v" * 100}, {"nested": {"x": [None]}}, "a\nb"],
    ),
]


@pytest.mark.parametrize(("make", "frames"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_split_gives_the_frames_back(
    make: Callable[[], Framer[Any]], frames: list[Any]
) -> None:
    wire = b"".join(make().encode(f) for f in frames)
    for cut in range(len(wire) + 1):
        framer = make()
        first = framer.feed(wire[:cut])
        assert framer.buffered == cut - len(b"".join(make().encode(f) for f in first))
        assert first + framer.feed(wire[cut:]) == frames, cut
        assert framer.buffered == 0


def test_raw_cuts_a_long_read_at_read_size() -> None:
    raw = Raw(read_size=4)
    for kind in (bytes, bytearray, memoryview):
        assert raw.feed(kind(b"abcdefghij")) == [b"abcd", b"efgh", b"ij"]
        assert raw.feed(kind(b"abcd")) == [b"abcd"]
        assert raw.feed(kind(b"")) == []
    assert all(type(f) is bytes for f in raw.feed(memoryview(b"abcdefghij")))
    data = b"x" * 100
    assert Raw().feed(data)[0] is data  # a bytes read is not copied


@pytest.mark.parametrize(("make", "frames"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_byte_at_a_time_and_all_at_once(make: Callable[[], Framer[Any]], frames: list[Any]) -> None:
    wire = b"".join(make().encode(f) for f in frames)
    framer = make()
    got: list[Any] = []
    for i in range(len(wire)):
        got += framer.feed(wire[i : i + 1])
    assert got == frames
    assert framer.buffered == 0
    for kind in (bytes, bytearray, memoryview):
        framer = make()
        assert framer.feed(kind(wire)) == frames
        assert framer.feed(kind(b"")) == []


@pytest.mark.parametrize(("make", "frames"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_frames_are_bytes_not_views(make: Callable[[], Framer[Any]], frames: list[Any]) -> None:
    framer = make()
    wire = b"".join(framer.encode(f) for f in frames)
    got = feed_chunks(framer, split_at(wire, [len(wire) // 3, len(wire) // 2]))
    assert got == frames
    if not isinstance(framer, JSON):
        assert all(type(f) is bytes for f in got)


# -- hypothesis round trips -------------------------------------------------------------------


def chunked(data: st.DataObject, wire: bytes) -> list[bytes]:
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))
    return split_at(wire, cuts)


@fast
@given(
    delimiter=st.binary(min_size=1, max_size=4),
    frames=st.lists(st.binary(max_size=30), max_size=10),
    data=st.data(),
)
def test_line_round_trip(delimiter: bytes, frames: list[bytes], data: st.DataObject) -> None:
    # A frame that holds the delimiter, or ends with the start of it, cannot be sent.
    frames = [f for f in frames if (f + delimiter).find(delimiter) == len(f)]
    framer = Line(max_length=30, delimiter=delimiter)
    wire = b"".join(framer.encode(f) for f in frames)
    assert feed_chunks(framer, chunked(data, wire)) == frames
    assert framer.buffered == 0


@fast
@given(
    size=st.sampled_from([1, 2, 4]),
    byteorder=st.sampled_from(["big", "little"]),
    frames=st.lists(st.binary(max_size=300), max_size=10),
    data=st.data(),
)
def test_length_prefixed_round_trip(
    size: int, byteorder: Any, frames: list[bytes], data: st.DataObject
) -> None:
    framer = LengthPrefixed(size, byteorder=byteorder)
    frames = [f for f in frames if len(f) <= framer.max_length]
    wire = b"".join(framer.encode(f) for f in frames)
    assert wire[:size] == b"" or int.from_bytes(wire[:size], byteorder) == len(frames[0])
    assert feed_chunks(framer, chunked(data, wire)) == frames
    assert framer.buffered == 0


@fast
@given(length=st.integers(1, 20), count=st.integers(0, 10), data=st.data())
def test_fixed_round_trip(length: int, count: int, data: st.DataObject) -> None:
    frames = [data.draw(st.binary(min_size=length, max_size=length)) for _ in range(count)]
    framer = Fixed(length)
    wire = b"".join(framer.encode(f) for f in frames)
    assert feed_chunks(framer, chunked(data, wire)) == frames
    assert framer.buffered == 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)


@fast
@given(
    values=st.lists(json_values, max_size=6),
    inner=st.sampled_from([Line, lambda: Line(delimiter=b"\r\n"), LengthPrefixed]),
    data=st.data(),
)
def test_json_round_trip(
    values: list[Any], inner: Callable[[], Framer[bytes]], data: st.DataObject
) -> None:
    framer = JSON(inner())
    wire = b"".join(framer.encode(v) for v in values)
    assert feed_chunks(framer, chunked(data, wire)) == values
    assert framer.buffered == 0


# -- limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [b"\n", b"\r\n", b"END"])
def test_line_max_length_is_exact(delimiter: bytes) -> None:
    ok = Line(max_length=5, delimiter=delimiter)
    assert ok.feed(b"abcde" + delimiter) == [b"abcde"]
    with pytest.raises(FrameTooLarge) as info:
        Line(max_length=5, delimiter=delimiter).feed(b"abcdef" + delimiter)
    assert (info.value.length, info.value.max_length) == (6, 5)
    # Several lines in one read.
    framer = Line(max_length=5, delimiter=delimiter)
    assert framer.feed(b"ok" + delimiter + b"abcde" + delimiter + b"x") == [b"ok", b"abcde"]
    with pytest.raises(FrameTooLarge) as info:
        Line(max_length=5, delimiter=delimiter).feed(b"ok" + delimiter + b"abcdef" + delimiter)
    assert info.value.length == 6
    # With the line already buffered: the oversized line ends in a later read.
    framer = Line(max_length=5, delimiter=delimiter)
    assert framer.feed(b"abc") == []
    with pytest.raises(FrameTooLarge):
        framer.feed(b"def" + delimiter)


@pytest.mark.parametrize("delimiter", [b"\n", b"\r\n", b"END"])
def test_line_too_large_without_delimiter_in_sight(delimiter: bytes) -> None:
    framer = Line(max_length=5, delimiter=delimiter)
    for byte in b"abcde":
        assert framer.feed(bytes([byte])) == []
    assert framer.buffered == 5
    with pytest.raises(FrameTooLarge) as info:
        framer.feed(b"f")
    assert info.value.length == 6
    assert info.value.max_length == 5
    assert framer.buffered == 0


def test_line_too_large_in_one_read_after_good_lines() -> None:
    with pytest.raises(FrameTooLarge) as info:
        Line(max_length=4).feed(b"ok\nfine\n" + b"x" * 100)
    assert info.value.length == 100


def test_line_limit_allows_a_partial_delimiter() -> None:
    # 5 bytes of line, then what may be the start of the delimiter: not too long yet.
    framer = Line(max_length=5, delimiter=b"\r\n")
    assert framer.feed(b"abcde\r") == []
    assert framer.buffered == 6
    assert framer.feed(b"\n") == [b"abcde"]
    framer = Line(max_length=5, delimiter=b"END")
    assert framer.feed(b"abcdeEN") == []
    assert framer.feed(b"D") == [b"abcde"]
    with pytest.raises(FrameTooLarge) as info:
        Line(max_length=5, delimiter=b"END").feed(b"abcdeEX")
    assert info.value.length == 7
    with pytest.raises(FrameTooLarge) as info:
        Line(max_length=5, delimiter=b"\r\n").feed(b"abcde\r\r")
    assert info.value.length == 6


def test_line_max_length_zero() -> None:
    framer = Line(max_length=0)
    assert framer.feed(b"\n\n") == [b"", b""]
    with pytest.raises(FrameTooLarge):
        framer.feed(b"x")


@pytest.mark.parametrize(("size", "byteorder"), [(1, "big"), (2, "little"), (4, "big")])
def test_length_prefixed_header_alone_triggers_too_large(size: int, byteorder: Any) -> None:
    framer = LengthPrefixed(size, max_length=10, byteorder=byteorder)
    assert framer.feed((10).to_bytes(size, byteorder) + b"0123456789") == [b"0123456789"]
    header = (11).to_bytes(size, byteorder)
    for cut in range(1, size + 1):
        framer = LengthPrefixed(size, max_length=10, byteorder=byteorder)
        assert framer.feed(header[: cut - 1]) == []
        with pytest.raises(FrameTooLarge) as info:
            framer.feed(header[cut - 1 :])  # completes the header, no payload yet
        assert (info.value.length, info.value.max_length) == (11, 10)


def test_length_prefixed_too_large_after_a_good_frame() -> None:
    framer = LengthPrefixed(2, max_length=3)
    assert framer.feed(b"\x00\x01a\x00") == [b"a"]
    with pytest.raises(FrameTooLarge):
        framer.feed(b"\x04")


def test_broken_framer_keeps_raising_the_same_error() -> None:
    framer = Line(max_length=3)
    with pytest.raises(FrameTooLarge) as first:
        framer.feed(b"abcd")
    for data in (b"ok\n", b"", memoryview(b"x")):
        with pytest.raises(FrameTooLarge) as again:
            framer.feed(data)
        assert again.value is first.value
    lp = LengthPrefixed(1, max_length=1)
    with pytest.raises(FrameTooLarge) as first:
        lp.feed(b"\x02")
    with pytest.raises(FrameTooLarge) as again:
        lp.feed(b"\x01a")
    assert again.value is first.value
    assert lp.buffered == 0
    # encode still works: the error is about the peer's bytes.
    assert lp.encode(b"a") == b"\x01a"


def test_json_decode_error() -> None:
    framer = JSON()
    with pytest.raises(FrameDecodeError) as info:
        framer.feed(b'{"ok": 1}\n{bad json\n')
    assert isinstance(info.value, FramingError)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value.__cause__, orjson.JSONDecodeError)
    with pytest.raises(FrameDecodeError) as again:
        framer.feed(b'{"ok": 1}\n')
    assert again.value is info.value


def test_json_passes_on_the_inner_framers_errors() -> None:
    framer = JSON(Line(max_length=4))
    with pytest.raises(FrameTooLarge) as info:
        framer.feed(b'"long string"\n')
    with pytest.raises(FrameTooLarge) as again:
        framer.feed(b"1\n")
    assert again.value is info.value
    assert framer.max_length == 4


# -- encode, construction, clone, buffered ----------------------------------------------------


def test_encode() -> None:
    assert Raw().encode(bytearray(b"ab")) == b"ab"
    assert Line().encode(memoryview(b"ab")) == b"ab\n"
    assert Line(delimiter=b"\r\n").encode(b"a\rb\n") == b"a\rb\n\r\n"
    assert LengthPrefixed(2).encode(b"abc") == b"\x00\x03abc"
    assert LengthPrefixed(2, byteorder="little").encode(bytearray(b"abc")) == b"\x03\x00abc"
    assert LengthPrefixed(1).encode(memoryview(b"")) == b"\x00"
    assert Fixed(2).encode(bytearray(b"ab")) == b"ab"
    assert JSON().encode({"a": [1, "x"]}) == b'{"a":[1,"x"]}\n'
    assert JSON(LengthPrefixed(1)).encode(None) == b"\x04null"
    framers: list[Framer[bytes]] = [Raw(), Line(), LengthPrefixed(), Fixed(2)]
    assert all(type(f.encode(b"ab")) is bytes for f in framers)


@pytest.mark.parametrize(
    ("framer", "frame", "match"),
    [
        (Line(), b"a\nb", "delimiter"),
        (Line(delimiter=b"\r\n"), b"a\r\nb", "delimiter"),
        (Line(delimiter=b"aa"), b"a", "delimiter"),  # "a" + "aa" would end one byte early
        (Line(max_length=2), b"abc", "max_length"),
        (LengthPrefixed(1), b"x" * 256, "max_length"),
        (LengthPrefixed(2, max_length=3), b"abcd", "max_length"),
        (Fixed(3), b"ab", "3"),
        (Fixed(3), b"abcd", "3"),
        (JSON(Line(max_length=3)), "long", "max_length"),
        (JSON(Line(delimiter=b",")), [1, 2], "delimiter"),
    ],
)
def test_encode_refuses(framer: Framer[Any], frame: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        framer.encode(frame)
    assert not isinstance(info.value, FramingError)  # local misuse, not the peer's fault


def test_json_encode_refuses_what_orjson_cannot_serialize() -> None:
    with pytest.raises(TypeError):
        JSON().encode(object())


@pytest.mark.parametrize(
    "make",
    [
        lambda: Raw(read_size=0),
        lambda: Line(max_length=-1),
        lambda: Line(delimiter=b""),
        lambda: LengthPrefixed(3),
        lambda: LengthPrefixed(8),
        lambda: LengthPrefixed(byteorder="middle"),  # type: ignore[arg-type]
        lambda: LengthPrefixed(1, max_length=256),
        lambda: LengthPrefixed(2, max_length=65536),
        lambda: LengthPrefixed(max_length=-1),
        lambda: Fixed(0),
    ],
)
def test_constructor_validation(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        make()


def test_configuration_and_repr() -> None:
    assert Raw().max_length == 65536
    assert Raw(read_size=100).max_length == 100
    assert Line().max_length == 65536
    assert LengthPrefixed(1).max_length == 255
    assert LengthPrefixed(2).max_length == 65535
    assert LengthPrefixed().max_length == 1 << 20  # finite by default, not 4 GiB
    assert LengthPrefixed(max_length=2**32 - 1).max_length == 2**32 - 1
    assert LengthPrefixed(2, max_length=65535).max_length == 65535
    assert Fixed(7).max_length == 7
    assert JSON().max_length == 1 << 20
    assert JSON(Fixed(9)).max_length == 9
    assert repr(Raw(read_size=10)) == "Raw(read_size=10)"
    assert repr(Line(max_length=4096)) == "Line(max_length=4096, delimiter=b'\\n')"
    assert repr(LengthPrefixed(2, max_length=9, byteorder="little")) == (
        "LengthPrefixed(size=2, max_length=9, byteorder='little')"
    )
    assert repr(Fixed(3)) == "Fixed(length=3)"
    assert repr(JSON()) == "JSON(inner=Line(max_length=1048576, delimiter=b'\\n'))"


def test_buffered_counts() -> None:
    line = Line(delimiter=b"\r\n")
    assert line.feed(b"a\r\nbc\r") == [b"a"]
    assert line.buffered == 3
    lp = LengthPrefixed(4)
    assert lp.feed(b"\x00\x00") == []
    assert lp.buffered == 2
    assert lp.feed(b"\x00\x05ab") == []
    assert lp.buffered == 6
    assert lp.feed(b"cde\x00") == [b"abcde"]
    assert lp.buffered == 1
    fixed = Fixed(4)
    assert fixed.feed(b"abcdef") == [b"abcd"]
    assert fixed.buffered == 2
    json = JSON()
    assert json.feed(b'[1]\n{"a"') == [[1]]
    assert json.buffered == 4
    raw = Raw()
    assert raw.feed(b"abc") == [b"abc"]
    assert raw.feed(b"") == []
    assert raw.buffered == 0


@pytest.mark.parametrize(
    ("template", "partial", "rest", "frame"),
    [
        (Line(max_length=10, delimiter=b"\r\n"), b"abc\r", b"\n", b"abc"),
        (LengthPrefixed(2, max_length=10, byteorder="little"), b"\x02\x00a", b"b", b"ab"),
        (Fixed(3), b"ab", b"c", b"abc"),
        (JSON(Line(max_length=10)), b"[1,", b"2]\n", [1, 2]),
        (Raw(read_size=5), b"", b"abc", b"abc"),
    ],
)
def test_clone_is_fresh_and_independent(
    template: Framer[Any], partial: bytes, rest: bytes, frame: Any
) -> None:
    assert template.feed(partial) == []
    assert template.buffered == len(partial)
    clone = template.clone()
    assert type(clone) is type(template)
    assert repr(clone) == repr(template)
    assert clone.max_length == template.max_length
    assert clone.buffered == 0
    assert clone.feed(partial + rest) == [frame]
    assert template.feed(rest) == [frame]  # the template's buffer was not shared


def test_clone_of_a_broken_framer_works() -> None:
    template = JSON(Line(max_length=2))
    with pytest.raises(FrameTooLarge):
        template.feed(b"1234")
    assert template.clone().feed(b"12\n") == [12]


def test_memoryview_of_a_reused_buffer() -> None:
    scratch = bytearray(b"hello\nwor")
    framer = Line()
    frames = framer.feed(memoryview(scratch))
    scratch[:] = b"XXXXXXXXX"
    assert frames == [b"hello"]
    scratch[:3] = b"ld\n"
    assert framer.feed(memoryview(scratch)[:3]) == [b"world"]

    scratch = bytearray(b"\x03abc\x02d")
    lp = LengthPrefixed(1)
    frames = lp.feed(memoryview(scratch))
    scratch[:] = b"\x00" * len(scratch)
    assert frames == [b"abc"]
    assert type(frames[0]) is bytes
    scratch[:1] = b"e"
    assert lp.feed(memoryview(scratch)[:1]) == [b"de"]

    scratch = bytearray(b"abcde")
    fixed = Fixed(2)
    frames = fixed.feed(memoryview(scratch))
    scratch[:] = b"\x00" * 5
    assert frames == [b"ab", b"cd"]
    assert fixed.feed(memoryview(scratch)[:1]) == [b"e\x00"]

    scratch = bytearray(b"abc")
    raw_frames = Raw().feed(memoryview(scratch))
    scratch[:] = b"xyz"
    assert raw_frames == [b"abc"]
    # The caller may resize its buffer after feed: nothing holds an export of it.
    scratch.extend(b"more")


# -- the protocol and the module --------------------------------------------------------------


def test_every_framer_is_a_framer() -> None:
    for framer in (Raw(), Line(), LengthPrefixed(), Fixed(1), JSON()):
        assert isinstance(framer, Framer)
        with pytest.raises(AttributeError):
            framer.extra = 1  # type: ignore[attr-defined] # __slots__, no __dict__


def test_module_does_no_io() -> None:
    # The source file (the module may run compiled from it).
    tree = ast.parse((Path(framing.__file__).parent / "framing.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"asyncio", "socket", "selectors", "ssl"}


def test_all_is_complete() -> None:
    assert len(framing.__all__) == len(set(framing.__all__))
    assert set(framing.__all__) == {"Framer", "Raw", "Line", "LengthPrefixed", "Fixed", "JSON"}
    for name in framing.__all__:
        assert getattr(framing, name).__doc__


# -- frames completed before an error travel on the error --------------------------


def test_line_error_carries_frames_completed_before_it() -> None:
    framer = Line(max_length=3)
    with pytest.raises(FrameTooLarge) as info:
        framer.feed(b"ab\ncd\ntoolong\n")
    assert info.value.frames == [b"ab", b"cd"]
    with pytest.raises(FrameTooLarge) as again:
        framer.feed(b"x\n")
    assert again.value is info.value
    assert again.value.frames == []  # delivered once, with the first raise


def test_line_partial_overflow_carries_frames() -> None:
    framer = Line(max_length=3)
    with pytest.raises(FrameTooLarge) as info:
        framer.feed(b"ok\nnever-ending")
    assert info.value.frames == [b"ok"]


def test_length_prefixed_error_carries_frames() -> None:
    framer = LengthPrefixed(size=1, max_length=4)
    with pytest.raises(FrameTooLarge) as info:
        framer.feed(b"\x02hi\x01!\x09")
    assert info.value.frames == [b"hi", b"!"]


def test_json_errors_carry_decoded_frames() -> None:
    framer = JSON(Line(max_length=8))
    with pytest.raises(FrameDecodeError) as info:
        framer.feed(b'{"a":1}\n[2]\nnot json\n')
    assert info.value.frames == [{"a": 1}, [2]]
    framer = JSON(Line(max_length=8))
    with pytest.raises(FrameTooLarge) as too_long:
        framer.feed(b"[1]\n" + b"9" * 20 + b"\n")
    assert too_long.value.frames == [[1]]


class _Slotted(Line):
    __slots__ = ("extra",)

    def __init__(self) -> None:
        super().__init__(max_length=64)
        self.extra = 7


@pytest.mark.parametrize(
    ("make", "frames"),
    [
        (lambda: Line(max_length=64), [b"abcd"]),
        (lambda: Fixed(4), [b"abcd"]),
        (_Slotted, [b"abcd"]),
    ],
)
def test_a_framer_copies_and_pickles_with_its_buffer(
    make: Callable[[], Any], frames: list[bytes]
) -> None:
    # The same compiled or not: every slot (a subclass's too) and the partial frame.
    framer = make()
    assert framer.feed(b"ab") == []
    for copied in (
        copy.copy(framer),
        copy.deepcopy(framer),
        *(pickle.loads(pickle.dumps(framer, protocol)) for protocol in (0, 2, 5)),
    ):
        assert type(copied) is type(framer)
        assert repr(copied) == repr(framer)
        assert copied.buffered == 2
        if isinstance(framer, _Slotted):
            assert copied.extra == 7
    assert pickle.loads(pickle.dumps(framer)).feed(b"cd\n") == frames
    assert framer.buffered == 2


def test_a_framer_method_on_another_object_raises() -> None:
    # A compiled method must check its self, not read another object's fields.
    with pytest.raises((TypeError, AttributeError)):
        Line.feed(None, b"x\n")  # type: ignore[arg-type]
    with pytest.raises((TypeError, AttributeError)):
        Line.encode(object(), b"x")  # type: ignore[arg-type]

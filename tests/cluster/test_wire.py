"""metakit.cluster._wire: the msgpack codec, with no network.

Every supported type round-trips as the same type at any depth; everything
else raises TypeError at pack; any bytes at all either decode to wire types or
raise WireError.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import math
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metakit import (
    PID,
    Alias,
    CallTimeout,
    Down,
    EventMessage,
    Exit,
    NameTaken,
    NodeDown,
    NoProcess,
    ProcessExited,
    Ref,
    RemoteError,
)
from metakit.cluster import _types, _wire
from metakit.cluster._types import message
from metakit.cluster._wire import Codec, WireError, encode_exception

fast = settings(max_examples=150, deadline=None, database=None)

NODE = "a@localhost"
P = PID(NODE, (12345 << 32) | 7)
A = Alias("b@localhost", (999 << 32) | 1)
R = Ref(NODE, 2**63 - 1)


@message(name="tests.wire.Ping")
@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    sender: PID
    payload: Any = None


@message
@dataclass(frozen=True)
class Empty:
    pass


@message(name="tests.wire.Options")
@dataclass(frozen=True, kw_only=True)
class Options:
    size: int
    label: str = "x"


@message(name="tests.wire.Derived")
@dataclass(frozen=True)
class Derived:
    width: int
    area: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "area", self.width * self.width)


@message(name="tests.wire.Checked")
@dataclass(frozen=True)
class Checked:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be positive")


@message(name="tests.wire.Busy")
class Busy(Exception):
    def __init__(self, what: str, retry: float) -> None:
        super().__init__(what, retry)
        self.what = what
        self.retry = retry


class Unregistered(Exception):
    pass


@dataclass(frozen=True)
class Loose:
    x: int


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    pass


@pytest.fixture
def codec() -> Codec:
    return Codec()


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    """Undo what a test registers: the registry is module-global."""
    tables: list[dict[Any, Any]] = [
        _types._NAMES,
        _types._CLASSES,
        _types._MESSAGE_TYPES,
        _types._MESSAGE_TAGS,
        _types._EXCEPTIONS,
    ]
    saved = [dict(table) for table in tables]
    yield
    for table, copy in zip(tables, saved, strict=True):
        table.clear()
        table.update(copy)


def raw(obj: object) -> bytes:
    """Hand-made msgpack (tuples as arrays, ExtType as is) for malformed input."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def assert_same(got: object, want: object) -> None:
    """Equal, and of exactly the same type at every depth."""
    assert type(got) is type(want), (got, want)
    if isinstance(want, list | tuple):
        assert isinstance(got, list | tuple)
        assert len(got) == len(want), (got, want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    elif isinstance(want, dict):
        assert isinstance(got, dict)
        assert got.keys() == want.keys()
        mine = {key: key for key in got}
        for key, value in want.items():
            assert_same(mine[key], key)
            assert_same(got[key], value)
    elif isinstance(want, set):
        assert isinstance(got, set)
        assert got == want
        mine = {item: item for item in got}
        for item in want:
            assert_same(mine[item], item)
    elif isinstance(want, float) and math.isnan(want):
        assert isinstance(got, float)
        assert math.isnan(got)
    elif dataclasses.is_dataclass(want):
        assert got == want
        for f in dataclasses.fields(want):
            assert_same(getattr(got, f.name), getattr(want, f.name))
    else:
        assert got == want


def round_trip(codec: Codec, value: object) -> object:
    out = codec.unpack(codec.pack(value))
    assert_same(out, value)
    return out


# --- round trips ------------------------------------------------------------

SCALARS: list[object] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    0.0,
    -0.0,
    1.5,
    math.inf,
    -math.inf,
    math.nan,
    "",
    "héllo ✓",
    b"",
    b"\x00\xff",
]

CONTAINERS: list[object] = [
    [],
    (),
    {},
    set(),
    [1, "a", None],
    (1, "a", None),
    {"k": 1, 2: "v", None: b"x", 1.5: True},
    {1, "a", None, (1, 2)},
    P,
    A,
    R,
    Ping(1, P),
    Ping(2, P, payload={"x": [1, 2]}),
    Empty(),
    Options(size=3),
    Derived(4),
]


@pytest.mark.parametrize("value", SCALARS + CONTAINERS, ids=repr)
def test_every_supported_type_round_trips_as_the_same_type(codec: Codec, value: object) -> None:
    round_trip(codec, value)


def test_bool_int_and_float_keep_their_types(codec: Codec) -> None:
    out = round_trip(codec, [True, 1, 0, False, 1.0, 0.0])
    assert [type(x) for x in out] == [bool, int, int, bool, float, float]  # type: ignore[attr-defined]


def test_tuples_lists_and_sets_keep_their_types_at_depth(codec: Codec) -> None:
    value = {
        (1, (2, 3), "k"): [(4, 5), [6, (7,)], {(8, 9), (10,)}],
        "set": {(1, 2), (3, (4, 5))},
        "pids": (P, [A, {R}], {P: A}),
    }
    round_trip(codec, value)


def test_registered_dataclass_carries_ids_inside_tuples(codec: Codec) -> None:
    value = ("wrapped", [Ping(3, P, payload=(A, {R: [P]}))], {Ping(4, P): "as a key"})
    out = round_trip(codec, value)
    ping = out[1][0]  # type: ignore[index]
    assert type(ping) is Ping
    assert ping.sender == P


def test_nesting_just_under_the_limit_round_trips(codec: Codec) -> None:
    value: object = "leaf"
    for depth in range(_wire.MAX_DEPTH):
        value = [value] if depth % 2 else (value,)
    round_trip(codec, value)


def test_derived_fields_are_recomputed_not_sent(codec: Codec) -> None:
    out = round_trip(codec, Derived(5))
    assert out.area == 25  # type: ignore[attr-defined]


ints = st.integers(-(2**63), 2**64 - 1)


@fast
@given(
    st.recursive(
        st.none() | st.booleans() | ints | st.floats(allow_nan=False) | st.text() | st.binary(),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.lists(inner, max_size=4).map(tuple)
            | st.dictionaries(st.text() | ints | st.tuples(ints), inner, max_size=4)
            | st.sets(ints | st.text() | st.tuples(st.text()), max_size=4)
            | st.builds(Ping, st.integers(0, 10), st.just(P), inner)
        ),
        max_leaves=20,
    )
)
def test_random_values_round_trip(value: object) -> None:
    round_trip(Codec(), value)


# --- what does not cross ----------------------------------------------------


def recursive_list() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


def recursive_dict() -> dict[str, object]:
    loop: dict[str, object] = {}
    loop["self"] = loop
    return loop


def too_deep() -> object:
    value: object = 1
    for _ in range(_wire.MAX_DEPTH + 1):
        value = [value]
    return value


UNSUPPORTED: list[tuple[str, object, str]] = [
    ("frozenset", frozenset({1}), "frozenset"),
    ("bytearray", bytearray(b"x"), "bytearray"),
    ("memoryview", memoryview(b"x"), "memoryview"),
    ("OrderedDict", collections.OrderedDict(a=1), "OrderedDict"),
    ("defaultdict", collections.defaultdict(int), "defaultdict"),
    ("IntEnum", Color.RED, "Color"),
    ("str subclass", Text("x"), "Text"),
    ("unregistered dataclass", Loose(1), "Loose"),
    ("class", Ping, "type"),
    ("function", print, "builtin_function_or_method"),
    ("lambda", lambda: None, "function"),
    ("object", object(), "object"),
    ("complex", 1j, "complex"),
    ("ExtType", msgpack.ExtType(1, b"\x00" * 8), "ExtType"),
    ("Timestamp", msgpack.Timestamp(1, 0), "Timestamp"),
    ("int too big", 2**64, "int"),
    ("int too small", -(2**63) - 1, "int"),
    ("lone surrogate", "\udcff", "str"),
    ("recursive list", recursive_list(), "list"),
    ("recursive dict", recursive_dict(), "dict"),
    ("too deep", too_deep(), "list"),
    ("PID with an int node", PID(1, 2), "PID"),  # type: ignore[arg-type]
    ("PID with a str id", PID("n", "2"), "PID"),  # type: ignore[arg-type]
    ("PID id over 64 bits", PID("n", 2**64), "PID"),
]


@pytest.mark.parametrize(
    ("value", "name"), [(v, n) for _, v, n in UNSUPPORTED], ids=[i for i, _, _ in UNSUPPORTED]
)
def test_unsupported_values_raise_type_error_at_any_depth(
    codec: Codec, value: object, name: str
) -> None:
    for wrapped in (value, [value], {"k": (1, {value: 1} if _hashable(value) else [value])}):
        with pytest.raises(TypeError, match=name):
            codec.pack(wrapped)
    with pytest.raises(TypeError, match=name):
        codec.pack(Ping(1, P, payload=(value,)))
    # Nothing half-written stays behind: the next value packs cleanly.
    assert codec.unpack(codec.pack(("next", [1]))) == ("next", [1])


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def test_a_failed_pack_leaves_the_codec_usable(codec: Codec) -> None:
    good = codec.pack({"a": [1, (2, 3)], "p": P})
    for bad in ([1, 2, frozenset()], {"x": [bytearray(3)]}, (1, 2**70), [recursive_list()]):
        with pytest.raises(TypeError):
            codec.pack(bad)
        assert codec.pack({"a": [1, (2, 3)], "p": P}) == good


# --- system messages --------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        Down(P, R, "normal"),
        Down(A, R, ValueError("boom", 3)),
        Down("event.name", R, "unregistered"),
        Exit(P, "kill"),
        EventMessage("prices", {"eur": 1.5}),
        NodeDown("b@localhost", "noconnection"),
    ],
    ids=repr,
)
def test_system_messages_round_trip(codec: Codec, value: object) -> None:
    out = codec.unpack(codec.pack(value))
    assert type(out) is type(value)
    assert repr(out) == repr(value)


def test_down_keeps_its_pid_target_and_ref(codec: Codec) -> None:
    out = codec.unpack(codec.pack(Down(P, R, "noproc")))
    assert out == Down(P, R, "noproc")
    assert type(out.target) is PID
    assert type(out.ref) is Ref


def test_exit_carries_an_exception_reason(codec: Codec) -> None:
    out = codec.unpack(codec.pack(Exit(P, RuntimeError("crashed", 42))))
    assert isinstance(out, Exit)
    assert out.source == P
    assert type(out.reason) is RuntimeError
    assert out.reason.args == ("crashed", 42)


# --- exceptions -------------------------------------------------------------


def test_builtin_exceptions_keep_type_and_args(codec: Codec) -> None:
    out = codec.unpack(codec.pack(ValueError("bad value", 7, (P,))))
    assert type(out) is ValueError
    assert out.args == ("bad value", 7, (P,))
    missing = codec.unpack(codec.pack(FileNotFoundError(2, "nope")))
    assert type(missing) is FileNotFoundError
    assert missing.errno == 2


def test_an_exception_group_keeps_its_members(codec: Codec) -> None:
    out = codec.unpack(codec.pack(ExceptionGroup("two", [ValueError(1), KeyError("k")])))
    assert type(out) is ExceptionGroup
    assert [type(e) for e in out.exceptions] == [ValueError, KeyError]


def test_metakit_errors_keep_type_and_attributes(codec: Codec) -> None:
    gone = codec.unpack(codec.pack(NoProcess(P)))
    assert type(gone) is NoProcess
    assert gone.target == P
    assert str(gone) == str(NoProcess(P))

    exited = codec.unpack(codec.pack(ProcessExited(A, ValueError("died"))))
    assert type(exited) is ProcessExited
    assert exited.target == A
    assert type(exited.reason) is ValueError
    assert exited.reason.args == ("died",)

    late = codec.unpack(codec.pack(CallTimeout("worker", 1.5)))
    assert type(late) is CallTimeout
    assert isinstance(late, TimeoutError)
    assert (late.target, late.timeout) == ("worker", 1.5)

    taken = codec.unpack(codec.pack(NameTaken("svc", P)))
    assert type(taken) is NameTaken
    assert (taken.name, taken.owner) == ("svc", P)


def test_a_registered_exception_keeps_its_type(codec: Codec) -> None:
    out = codec.unpack(codec.pack(Busy("db", 0.5)))
    assert type(out) is Busy
    assert (out.what, out.retry) == ("db", 0.5)


def test_an_unregistered_exception_arrives_as_remote_error(codec: Codec) -> None:
    out = codec.unpack(codec.pack(Unregistered("oops", 1)))
    assert type(out) is RemoteError
    assert out.type_name == f"{Unregistered.__module__}.Unregistered"
    assert out.message == "('oops', 1)"
    again = codec.unpack(codec.pack(out))  # forwarding keeps what it said
    assert type(again) is RemoteError
    assert (again.type_name, again.message) == (out.type_name, out.message)


@pytest.mark.parametrize(
    ("exc", "type_name"),
    [
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (SystemExit(3), "SystemExit"),
        (asyncio.CancelledError("stop"), "asyncio.exceptions.CancelledError"),
        (GeneratorExit(), "GeneratorExit"),
    ],
    ids=repr,
)
def test_base_exceptions_arrive_as_remote_error(
    codec: Codec, exc: BaseException, type_name: str
) -> None:
    out = codec.unpack(codec.pack(exc))
    assert type(out) is RemoteError
    assert out.type_name == type_name
    assert out.message == str(exc)


def test_a_constructor_that_refuses_the_args_gives_remote_error(codec: Codec) -> None:
    data = raw([msgpack.ExtType(7, b""), "tests.wire.Busy", ("only one",), "db"])
    out = codec.unpack(data)
    assert type(out) is RemoteError
    assert (out.type_name, out.message) == ("tests.wire.Busy", "db")


def test_args_that_do_not_encode_are_dropped_never_raised(codec: Codec) -> None:
    for exc, text in [
        (ValueError(object()), None),
        (ValueError(2**70), "1180591620717411303424"),
        (ValueError("\udcff"), "\\udcff"),
        (ValueError(frozenset({1})), "frozenset({1})"),
    ]:
        out = codec.unpack(codec.pack(exc))
        assert type(out) is ValueError
        assert str(out) == (text if text is not None else str(exc))
    out = codec.unpack(codec.pack(NoProcess(frozenset())))
    assert type(out) is RemoteError  # NoProcess() needs its target
    assert out.message == "no process frozenset()"


def test_exceptions_that_fight_back_still_encode(codec: Codec) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    loop = ValueError()
    loop.args = (loop,)
    for exc in (Unprintable(), loop):
        data = codec.pack([exc])
        assert isinstance(codec.unpack(data), list)
        assert isinstance(encode_exception(exc), list)
    out = codec.unpack(codec.pack(Unprintable()))
    assert type(out) is RemoteError
    assert "unprintable" in out.message


# --- @message ---------------------------------------------------------------


def test_message_returns_the_class_and_registers_by_qualified_name(
    codec: Codec, scratch_registry: None
) -> None:
    @dataclass(frozen=True)
    class Local:
        x: int

    assert message(Local) is Local
    assert message(Local) is Local  # again: a no-op
    assert _types._NAMES[Local] == f"{Local.__module__}.{Local.__qualname__}"
    round_trip(codec, (Local(1), [Local(2)]))


def test_message_refuses_what_it_cannot_carry(scratch_registry: None) -> None:
    @dataclass
    class Mutable:
        x: int

    class Plain:
        pass

    class Fatal(BaseException):
        pass

    @dataclass(frozen=True)
    class WithInitVar:
        x: int
        seed: dataclasses.InitVar[int]

    with pytest.raises(TypeError, match="frozen"):
        message(Mutable)
    with pytest.raises(TypeError, match="Plain"):
        message(Plain)
    with pytest.raises(TypeError, match="BaseException"):
        message(Fatal)
    with pytest.raises(TypeError, match="__init__"):
        message(WithInitVar)
    with pytest.raises(TypeError, match="class"):
        message(print)  # type: ignore[call-overload]


def test_message_names_clash(scratch_registry: None) -> None:
    @dataclass(frozen=True)
    class First:
        x: int

    @dataclass(frozen=True)
    class Second:
        x: int

    message(name="tests.wire.clash")(First)
    assert message(name="tests.wire.clash")(First) is First
    with pytest.raises(ValueError, match="already registered"):
        message(name="tests.wire.clash")(Second)
    with pytest.raises(ValueError, match="already registered"):
        message(name="tests.wire.other")(First)
    with pytest.raises(ValueError, match="already registered"):
        message(name="metakit.messages.Down")(Second)
    with pytest.raises(ValueError, match="builtin"):
        message(name="ValueError")(Second)


def test_system_messages_and_errors_are_registered_under_stable_names() -> None:
    for system in (Down, Exit, EventMessage, NodeDown):
        assert _types._NAMES[system] == f"metakit.messages.{system.__name__}"
    for error in (NoProcess, ProcessExited, CallTimeout, RemoteError):
        assert _types._NAMES[error] == f"metakit.errors.{error.__name__}"


# --- malformed input --------------------------------------------------------

# Not one value, though a batch may hold them (or they may start one).
NOT_ONE_VALUE: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("trailing bytes", raw(1) + raw(2)),
    ("truncated array", raw((1, 2, 3))[:-1]),
]

MALFORMED: list[tuple[str, bytes]] = [
    ("never-used byte", b"\xc1"),
    ("non-UTF-8 str", b"\xa2\xff\xfe"),
    ("huge str", b"\xdb\xff\xff\xff\xff" + b"x"),
    ("huge bin", b"\xc6\xff\xff\xff\xff" + b"x"),
    ("huge array", b"\xdd\xff\xff\xff\xff" + b"\xc0"),
    ("huge map", b"\xdf\xff\xff\xff\xff" + b"\xc0\xc0"),
    ("huge ext", b"\xc9\xff\xff\xff\xff\x01"),
    ("too deep", b"\x91" * 5000 + b"\xc0"),
    ("unknown ext code", raw(msgpack.ExtType(99, b""))),
    ("unknown ext code in a list", raw((1, msgpack.ExtType(42, b"x")))),
    ("timestamp", raw(msgpack.Timestamp(1, 5))),
    ("timestamp inside", raw({"at": (1, msgpack.Timestamp(2**40, 0))})),
    ("bad timestamp size", b"\xd5\xff\x00\x00"),
    ("timestamp as ext 8", (b"\x91\xc7\x04\xff" + bytes(4))),
    ("timestamp as ext 16", (b"\x91\xc8\x00\x08\xff" + bytes(8))),
    ("timestamp as ext 32", (b"\x91\xc9\x00\x00\x00\x0c\xff" + bytes(12))),
    ("unknown message name", raw((msgpack.ExtType(6, b"no.such.Message"), 1))),
    ("non-UTF-8 message name", raw((msgpack.ExtType(6, b"\xff\xfe"),))),
    ("too few fields", raw((msgpack.ExtType(6, b"tests.wire.Ping"), 1))),
    ("too many fields", raw((msgpack.ExtType(6, b"tests.wire.Ping"), 1, 2, 3, 4))),
    ("wrong kw fields", raw((msgpack.ExtType(6, b"tests.wire.Options"),))),
    ("__post_init__ refuses", raw((msgpack.ExtType(6, b"tests.wire.Checked"), -1))),
    ("list as map key", raw({(msgpack.ExtType(4, b""), 1): 2})),
    ("set as map key", raw({(msgpack.ExtType(5, b""), 1): 2})),
    ("list in a set", raw((msgpack.ExtType(5, b""), (msgpack.ExtType(4, b""),)))),
    ("tag alone", raw(msgpack.ExtType(4, b""))),
    ("tag not first", raw((1, msgpack.ExtType(4, b"")))),
    ("tag as map value", raw({"k": msgpack.ExtType(5, b"")})),
    ("tag as map key", raw({msgpack.ExtType(7, b""): 1})),
    ("message tag alone", raw(msgpack.ExtType(6, b"tests.wire.Ping"))),
    ("tag with payload", raw((msgpack.ExtType(4, b"x"), 1))),
    ("PID too short", raw(msgpack.ExtType(1, b"short"))),
    ("PID node not UTF-8", raw(msgpack.ExtType(1, b"\x00" * 8 + b"\xff"))),
    ("Alias too short", raw(msgpack.ExtType(2, b""))),
    ("Ref node not UTF-8", raw(msgpack.ExtType(3, b"\x00" * 8 + b"\xc3"))),
    ("exception too short", raw((msgpack.ExtType(7, b""), "ValueError"))),
    ("exception parts", raw((msgpack.ExtType(7, b""), 1, 2, 3))),
]


@pytest.mark.parametrize("data", [d for _, d in MALFORMED], ids=[i for i, _ in MALFORMED])
def test_malformed_input_raises_wire_error(codec: Codec, data: bytes) -> None:
    with pytest.raises(WireError):
        codec.unpack(data)
    with pytest.raises(WireError):
        list(codec.frames(raw("first") + data + raw("never")))
    # and the codec is fine afterwards
    assert codec.unpack(codec.pack([(1,), {2}])) == [(1,), {2}]


@pytest.mark.parametrize("data", [d for _, d in NOT_ONE_VALUE], ids=[i for i, _ in NOT_ONE_VALUE])
def test_unpack_takes_exactly_one_value(codec: Codec, data: bytes) -> None:
    with pytest.raises(WireError):
        codec.unpack(data)


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError)


def test_valid_ids_with_empty_nodes_decode(codec: Codec) -> None:
    assert codec.unpack(raw(msgpack.ExtType(1, b"\x00" * 7 + b"\x05"))) == PID("", 5)


def test_max_size_bounds_what_is_decoded() -> None:
    codec = Codec(max_size=64)
    data = codec.pack("x" * 100)
    with pytest.raises(WireError, match="max_size"):
        codec.unpack(data)
    with pytest.raises(WireError, match="max_size"):
        list(codec.frames(data))
    assert codec.unpack(codec.pack("x" * 10)) == "x" * 10
    with pytest.raises(ValueError, match="max_size"):
        Codec(max_size=0)


def allowed(value: object) -> bool:
    """Whether a decoded value holds only wire types (no stray tag, no Timestamp)."""
    cls = type(value)
    if cls in (type(None), bool, int, float, str, bytes, PID, Alias, Ref):
        return True
    if cls in (list, tuple, set):
        return all(allowed(item) for item in value)  # type: ignore[attr-defined]
    if cls is dict:
        return all(allowed(k) and allowed(v) for k, v in value.items())  # type: ignore[attr-defined]
    if isinstance(value, BaseException):
        return all(allowed(arg) for arg in value.args)
    if cls in _types._MESSAGE_TYPES:
        return all(allowed(getattr(value, f.name)) for f in dataclasses.fields(value))  # type: ignore[arg-type]
    return False


SAMPLES: list[object] = [
    {"a": [1, (2, 3), {4}], (5, "k"): b"\xff\x00", "p": (P, A, R)},
    Down(P, R, ValueError("x", -1)),
    [Ping(1, P, payload=Options(size=2)), Exit(A, NoProcess(P)), -1.25],
    (msgpack.ExtType(6, b"tests.wire.Ping"), -41, -42, 12, -1),  # tuples of bytes near the marks
]


def decode_only_wire_errors(codec: Codec, data: bytes) -> None:
    try:
        value = codec.unpack(data)
    except WireError:
        pass
    else:
        assert allowed(value), value
    try:
        for value in codec.frames(data):
            assert allowed(value), value
    except WireError:
        pass


def test_random_garbage_only_ever_raises_wire_error(codec: Codec) -> None:
    rng = random.Random(20240611)
    for _ in range(400):
        decode_only_wire_errors(codec, rng.randbytes(rng.randrange(0, 48)))


def test_mutated_messages_only_ever_raise_wire_error(codec: Codec) -> None:
    rng = random.Random(8)
    encoded = [raw(SAMPLES[-1])] + [codec.pack(value) for value in SAMPLES[:-1]]
    for _ in range(400):
        data = bytearray(rng.choice(encoded))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data))
            match rng.randrange(3):
                case 0:
                    data[at] = rng.randrange(256)
                case 1:
                    del data[at]
                case _:
                    data.insert(at, rng.randrange(256))
        decode_only_wire_errors(codec, bytes(data))


def test_every_strict_prefix_of_a_value_is_a_wire_error(codec: Codec) -> None:
    for value in SAMPLES[:-1]:
        data = codec.pack(value)
        for end in range(len(data)):
            with pytest.raises(WireError):
                codec.unpack(data[:end])


# --- batches ----------------------------------------------------------------


def drain(frames: Iterator[object]) -> tuple[list[object], WireError | None]:
    """The values ``frames`` yields, and the WireError that ended it, if one did."""
    got: list[object] = []
    try:
        for value in frames:
            got.append(value)
    except WireError as exc:
        return got, exc
    return got, None


def test_frames_yields_a_thousand_values_in_order(codec: Codec) -> None:
    values = [(i, [i, str(i)], {i: P} if i % 3 else Ping(i, P)) for i in range(1000)]
    batch = b"".join(codec.pack(value) for value in values)
    got = list(codec.frames(batch))
    assert got == values
    for g, w in zip(got, values, strict=True):
        assert_same(g, w)


def test_frames_of_nothing_yields_nothing(codec: Codec) -> None:
    assert list(codec.frames(b"")) == []


@pytest.mark.parametrize(
    "tail", [b"\x93\x01", b"\xc1", b"\xd4", raw((msgpack.ExtType(99, b""),))], ids=repr
)
def test_a_bad_tail_yields_the_good_values_first(codec: Codec, tail: bytes) -> None:
    good = [("one", 1), [P], {"three": {3}}]
    got, error = drain(codec.frames(b"".join(codec.pack(v) for v in good) + tail))
    assert got == good
    assert isinstance(error, WireError)


def test_a_truncated_last_value_is_a_wire_error_after_the_others(codec: Codec) -> None:
    values = [Down(P, R, "normal"), ("x", [1, 2])]
    last = codec.pack({"a": [1, 2, 3], "b": Ping(1, P)})
    batch = b"".join(codec.pack(v) for v in values) + last[:-3]
    frames = codec.frames(batch)
    assert next(frames) == values[0]
    assert next(frames) == values[1]
    with pytest.raises(WireError, match="after 2 values"):
        next(frames)


# --- caches -----------------------------------------------------------------


def test_decoded_pids_are_cached_and_their_nodes_interned(codec: Codec) -> None:
    data = codec.pack(P)
    first = codec.unpack(data)
    assert codec.unpack(data) is first
    node = "".join(["a@", "localhost"])  # a str that is not the literal
    others = codec.unpack(codec.pack([PID(node, 1), Alias(node, 2), Ref(node, 3)]))
    assert all(x.node is sys.intern(node) for x in others)  # type: ignore[attr-defined]


def test_the_caches_stay_bounded(codec: Codec) -> None:
    batch = b"".join(codec.pack(PID(f"n{i}", i)) for i in range(10_000))
    assert [p.id for p in codec.frames(batch)] == list(range(10_000))  # type: ignore[attr-defined]
    assert len(codec._pids) <= 4096
    assert len(codec._nodes) <= 4096
    assert len(codec._encoded_ids) <= 4096


def test_a_cached_encoding_is_not_reused_for_another_node(codec: Codec) -> None:
    assert codec.unpack(codec.pack(PID("x", 1))) == PID("x", 1)
    assert codec.unpack(codec.pack(PID("y", 1))) == PID("y", 1)
    assert codec.unpack(codec.pack(Alias("y", 1))) == Alias("y", 1)

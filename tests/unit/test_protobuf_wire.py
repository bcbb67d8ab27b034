"""The schema-less protobuf decoder against messages the official `protobuf` package encodes
from a test .proto (compiled at test time by grpcio-tools' protoc)."""
import os
import random
import struct

import pytest

from recorder.protocols.connect import wire
from recorder.protocols.connect.descriptors import Descriptors, child, field_of, value_text
from tests.support.protos import compile_protos


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"))


def by_num(fields):
    out = {}
    for f in fields:
        out.setdefault(f.num, []).append(f)
    return out


def everything(pb):
    E = pb.everything.Everything
    m = E(i32=150, i64=1 << 40, u64=(1 << 64) - 1, s32=-3, flag=True, f64=0x0102030405060708, sf32=-2,
          d=1.5, f=0.25, text="hello, wire", blob=b"\xff\xfe\x00\x80binary", packed=[1, 2, 300],
          kind=E.TWO, negative=-7, unicode="naïve ☃ text", f32=0xDEADBEEF)
    m.inner.text = "nested text"
    m.inner.n = 42
    m.many.add(text="first", n=1)
    m.many.add(text="second", n=2)
    m.labels["team"] = "platform"
    node = m.tree
    for depth in range(5):
        node.name = f"level {depth}"
        node = node.child
    return m


def test_every_wire_type_decodes_to_the_field_tree(pb):
    data = everything(pb).SerializeToString()
    fields = by_num(wire.parse(data))
    assert fields[1][0].kind == "v" and fields[1][0].value == 150
    assert fields[2][0].value == 1 << 40
    assert fields[3][0].value == (1 << 64) - 1
    assert fields[4][0].value == 5  # zigzag(-3)
    assert fields[5][0].value == 1
    assert fields[6][0].kind == "i64" and fields[6][0].value == 0x0102030405060708
    assert fields[7][0].kind == "i32" and fields[7][0].value == (1 << 32) - 2
    assert fields[8][0].kind == "i64" and fields[8][0].value == int.from_bytes(struct.pack("<d", 1.5), "little")
    assert fields[9][0].kind == "i32" and fields[9][0].value == int.from_bytes(struct.pack("<f", 0.25), "little")
    assert (fields[10][0].kind, fields[10][0].value) == ("s", "hello, wire")
    assert (fields[11][0].kind, fields[11][0].value) == ("b64", b"\xff\xfe\x00\x80binary")  # non-UTF-8 bytes
    inner = by_num(fields[12][0].value)
    assert fields[12][0].kind == "m" and inner[1][0].value == "nested text" and inner[2][0].value == 42
    assert fields[13][0].kind == "b64" and wire.to_json([fields[13][0]])[0]["varints"] == [1, 2, 300]  # packed
    assert [by_num(f.value)[1][0].value for f in fields[14]] == ["first", "second"]  # repeated messages
    assert fields[15][0].value == 2
    entry = by_num(fields[16][0].value)  # a map entry is a message {1: key, 2: value}
    assert (entry[1][0].value, entry[2][0].value) == ("team", "platform")
    assert fields[17][0].value == (1 << 64) - 7  # a negative int32 is a 10-byte varint
    assert fields[18][0].value == "naïve ☃ text"
    assert fields[20][0].kind == "i32" and fields[20][0].value == 0xDEADBEEF
    names, node = [], fields[19][0]
    while node is not None:  # nested five levels deep
        sub = by_num(node.value)
        names.append(sub[2][0].value)
        node = sub.get(1, [None])[0]
    assert names == [f"level {i}" for i in range(5)]


def test_groups_decode(pb):
    old = pb.legacy.Old(after="tail")
    old.legacy.note = "in a group"
    old.legacy.count = 3
    data = old.SerializeToString()
    fields = wire.parse(data)
    assert fields[0].kind == "g" and by_num(fields[0].value)[2][0].value == "in a group"
    assert by_num(fields)[4][0].value == "tail"
    assert wire.encode(fields) == data


def test_the_tree_is_lossless(pb):
    data = everything(pb).SerializeToString()
    fields = wire.parse(data)
    assert wire.encode(fields) == data
    stored = wire.to_json(fields)
    assert wire.encode(wire.from_json(stored)) == data
    # and the official parser reads our re-encoding back to the same message
    again = pb.everything.Everything.FromString(wire.encode(wire.from_json(stored)))
    assert again == everything(pb)


def test_a_masked_string_re_encodes_with_its_new_length(pb):
    fields = wire.parse(everything(pb).SerializeToString())
    for _, f in wire.walk(fields):
        if f.kind == "s" and f.value == "nested text":
            f.value = "[MASKED:test:0011aabb]"
    msg = pb.everything.Everything.FromString(wire.encode(fields))
    assert msg.inner.text == "[MASKED:test:0011aabb]" and msg.inner.n == 42 and msg.text == "hello, wire"


def test_a_hex_encoded_message_is_decoded_and_kept_hex(pb):
    inner = pb.everything.Inner(text="prompt inside hex", n=9).SerializeToString()
    outer = pb.everything.Inner(text=inner.hex()).SerializeToString()  # Cursor's BidiAppend does this
    (f,) = wire.parse(outer)
    assert f.kind == "x" and by_num(f.value)[1][0].value == "prompt inside hex"
    assert wire.encode([f]) == outer


def test_text_that_happens_to_parse_stays_text():
    for text in ("hi there", "Hello", "ok", "path/to/file.py", "{\"a\": 1}", "\x1b[31mred\x1b[0m"):
        data = wire.encode([wire.Field(1, "s", text)])
        (f,) = wire.parse(data)
        assert (f.kind, f.value) == ("s", text), text


@pytest.mark.parametrize("data, where", [
    (b"\x08", "truncated varint at byte 1"),
    (b"\x08\x96", "truncated varint at byte 1"),
    (b"\x0a\x05abc", "length 5 past the end at byte 0"),
    (b"\x0a\xff\xff\xff\xff\x0f", "past the end"),
    (b"\x0e\x00", "wire type 6"),
    (b"\x0f\x00", "wire type 7"),
    (b"\x00\x01", "field number 0"),
    (b"\x09\x01\x02", "fixed64 past the end"),
    (b"\x0d\x01", "fixed32 past the end"),
    (b"\x0b\x10\x01", "group 1 not ended"),
    (b"\x0c", "end of group 1 without its start"),
    (b"\x08\x80\x00", "non-canonical varint"),
    (b"\x08" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
    (b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "varint over 64 bits"),
])
def test_malformed_input_raises_wire_error(data, where):
    with pytest.raises(wire.WireError, match=where):
        wire.parse(data)


def test_random_and_mutated_bytes_never_crash(pb):
    rng = random.Random(19)
    good = everything(pb).SerializeToString()
    for i in range(3000):
        if i % 2:
            data = os.urandom(rng.randint(0, 64))
        else:
            data = bytearray(good[: rng.randint(0, len(good))])
            for _ in range(rng.randint(0, 3)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        try:
            fields = wire.parse(data)
        except wire.WireError:
            continue
        assert wire.encode(fields) == data
        assert wire.encode(wire.from_json(wire.to_json(fields))) == data


def test_nesting_deeper_than_the_limit_does_not_recurse_forever():
    data = b"\x0a\x00"
    for _ in range(500):
        data = b"\x0a" + wire.varint(len(data)) + data
    fields = wire.parse(data)
    assert wire.encode(fields) == data
    depth = max(p.count(".") for p, _ in wire.walk(fields))
    assert depth <= wire.MAX_DEPTH + 1


def test_a_descriptor_set_names_the_fields(pb):
    d = Descriptors([pb.descriptor_set])
    inp, out = d.method("/wiretrail.test.Tools/Run")
    assert (inp.full_name, out.full_name) == ("wiretrail.test.Everything", "wiretrail.test.Inner")
    assert field_of(inp, 12).name == "inner" and field_of(child(inp, 12), 1).name == "text"
    stored = {n["f"]: n for n in wire.to_json(wire.parse(everything(pb).SerializeToString()))}
    assert value_text(field_of(inp, 4), stored[4]) == "-3"
    assert value_text(field_of(inp, 17), stored[17]) == "-7"
    assert value_text(field_of(inp, 8), stored[8]) == "1.5"
    assert value_text(field_of(inp, 7), stored[7]) == "-2"
    assert value_text(field_of(inp, 15), stored[15]) == "TWO"
    assert d.method("/wiretrail.test.Tools/Nope") is None and d.method("/no.Such/Run") is None


def test_a_file_that_is_not_a_descriptor_set_is_refused_clearly(tmp_path):
    bad = tmp_path / "x.pb"
    bad.write_bytes(b"\xff\xff\xff")
    from recorder.protocols.connect.descriptors import DescriptorError
    with pytest.raises(DescriptorError, match="not a FileDescriptorSet"):
        Descriptors([bad])
    with pytest.raises(DescriptorError, match="cannot read"):
        Descriptors([tmp_path / "missing.pb"])

"""The ``tf.train.Example`` protobuf wire format, read and written without protobuf.

``encode_example`` serializes {name: bytes | str | ints | floats}; ``parse_example`` reads any
serialized Example (packed or unpacked values, unknown fields skipped) as {name: list of values}.
"""

from __future__ import annotations

import struct
from typing import Iterable

import numpy as np

from archlab.train.errors import DataError


class _Malformed(ValueError):
    """Bytes that are not the protobuf message expected (records.py's readers make it a DataError naming the record)."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 70:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise _Malformed("a varint runs past its message")


def _fields(buf: bytes, pos: int, end: int):
    """(field number, wire type, value) of a message: an int for varints, (start, end) otherwise."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value
            continue
        size, pos = _varint(buf, pos, end) if wire == 2 else ({1: 8, 5: 4}.get(wire), pos)
        if size is None:
            raise _Malformed(f"wire type {wire}")
        if pos + size > end:
            raise _Malformed("a field runs past its message")
        yield field, wire, (pos, pos + size)
        pos += size


def _message(field: int, wire: int, value) -> tuple[int, int]:
    if wire != 2:
        raise _Malformed(f"field {field} should be length-delimited, has wire type {wire}")
    return value


def _feature(buf: bytes, start: int, end: int) -> list:
    """A Feature: the values of its bytes_list (1), float_list (2) or int64_list (3), packed or not."""
    values: list = []
    for kind, wire, span in _fields(buf, start, end):
        if kind not in (1, 2, 3):
            continue
        values = []
        for field, value_wire, value in _fields(buf, *_message(kind, wire, span)):
            if field != 1:
                continue
            if kind == 1:
                values.append(buf[slice(*_message(field, value_wire, value))])
            elif kind == 2 and value_wire == 5:
                values.append(struct.unpack_from("<f", buf, value[0])[0])
            elif kind == 2 and value_wire == 2 and (value[1] - value[0]) % 4 == 0:
                values.extend(struct.unpack_from(f"<{(value[1] - value[0]) // 4}f", buf, value[0]))
            elif kind == 3 and value_wire == 0:
                values.append(value - (1 << 64) if value >= 1 << 63 else value)
            elif kind == 3 and value_wire == 2:
                pos = value[0]
                while pos < value[1]:
                    number, pos = _varint(buf, pos, value[1])
                    values.append(number - (1 << 64) if number >= 1 << 63 else number)
            else:
                raise _Malformed(f"{('', 'bytes', 'float', 'int64')[kind]}_list value has wire type {value_wire}")
    return values


def parse_example(data: bytes, keys: Iterable[str] | None = None) -> dict[str, list]:
    """A serialized ``tf.train.Example`` as {feature name: list of bytes, floats or ints}, optionally
    only the features in ``keys``. Raises ValueError on bytes that are not an Example."""
    wanted = None if keys is None else set(keys)
    features: dict[str, list] = {}
    for field, wire, span in _fields(data, 0, len(data)):
        if field != 1:  # Example.features; other field numbers are unknown fields, skipped
            continue
        for entry_field, entry_wire, entry in _fields(data, *_message(field, wire, span)):
            if entry_field != 1:
                continue
            name, value = None, None
            for part, part_wire, part_span in _fields(data, *_message(entry_field, entry_wire, entry)):
                if part == 1:  # UnicodeDecodeError is a ValueError too
                    name = data[slice(*_message(part, part_wire, part_span))].decode("utf-8")
                elif part == 2:
                    value = _message(part, part_wire, part_span)
            if name is None:
                raise _Malformed("a feature has no name")
            if wanted is None or name in wanted:
                features[name] = _feature(data, *value) if value else []
    return features


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint_bytes(field << 3 | 2) + _varint_bytes(len(payload)) + payload


def _encode_feature(name: str, value) -> bytes:
    """A Feature message: bytes/str -> bytes_list, ints -> int64_list, floats -> float_list (packed)."""
    if isinstance(value, np.ndarray):
        value = value.ravel().tolist()
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        return b""  # a Feature with no kind set
    if all(isinstance(v, (bytes, bytearray, memoryview, str)) for v in values):
        items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]
        return _length_delimited(1, b"".join(_length_delimited(1, v) for v in items))
    if all(isinstance(v, (int, np.integer)) for v in values):
        if any(not -(1 << 63) <= int(v) < 1 << 63 for v in values):
            raise DataError(f"feature {name!r}: an integer does not fit in int64")
        packed = b"".join(_varint_bytes(int(v) % (1 << 64)) for v in values)
        return _length_delimited(3, _length_delimited(1, packed))
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return _length_delimited(2, _length_delimited(1, struct.pack(f"<{len(values)}f", *values)))
    kinds = sorted({type(v).__name__ for v in values})
    raise DataError(f"feature {name!r}: cannot encode {', '.join(kinds)} (give bytes/str, ints or floats)")


def encode_example(features: dict) -> bytes:
    """A ``tf.train.Example`` serialized from {name: bytes | str | int | float | list of one kind | ndarray}."""
    entries = b"".join(
        _length_delimited(1, _length_delimited(1, name.encode("utf-8")) + _length_delimited(2, _encode_feature(name, value)))
        for name, value in features.items())
    return _length_delimited(1, entries)

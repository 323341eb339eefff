"""A minimal protocol buffers wire-format encoder (enough for profile.proto).

Only what pprof's schema needs: varint fields (uint64, int64, bool),
length-delimited fields (string, bytes, embedded messages) and packed repeated
varints. No zigzag (profile.proto has no sint fields). Negative int64 values
are encoded as protobuf does: the 64-bit two's complement as a 10-byte varint.

Scalar fields follow proto3 rules: a field holding its default (0, False, "")
is not written. Embedded messages are always written, empty or not, because
an empty element of a repeated message field still counts.
"""

from __future__ import annotations

from collections.abc import Iterable

_U64 = 0xFFFF_FFFF_FFFF_FFFF

# Wire types.
VARINT = 0
LEN = 2


# The encodings of 0 .. 2^14 - 1 (one or two bytes), precomputed: most ids, indices
# and tags are small, and a table look-up is several times faster than the loop.
_SMALL_LIMIT = 1 << 14
_SMALL = [bytes((v,)) if v < 0x80 else bytes(((v & 0x7F) | 0x80, v >> 7))
          for v in range(_SMALL_LIMIT)]


def encode_varint(value: int, out: bytearray) -> None:
    """Append `value` (an unsigned 64-bit integer, or a negative int64) as a varint."""
    if 0 <= value < _SMALL_LIMIT:
        out += _SMALL[value]
        return
    if value < 0:
        if value < -(1 << 63):
            raise ValueError(f"{value} does not fit in int64")
        value &= _U64
    elif value > _U64:
        raise ValueError(f"{value} does not fit in uint64")
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def varint(value: int) -> bytes:
    out = bytearray()
    encode_varint(value, out)
    return bytes(out)


class Message:
    """The encoded fields of one message, appended in the order written."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def _tag(self, field: int, wire_type: int) -> None:
        if 0 < field < _SMALL_LIMIT >> 3:
            self._buf += _SMALL[field << 3 | wire_type]
        elif 0 < field < 1 << 29:
            encode_varint(field << 3 | wire_type, self._buf)
        else:
            raise ValueError(f"bad field number {field}")

    def uint64(self, field: int, value: int) -> Message:
        """A uint64 or int64 field: omitted when 0."""
        if value:
            self._tag(field, VARINT)
            encode_varint(value, self._buf)
        return self

    int64 = uint64

    def flag(self, field: int, value: bool) -> Message:
        """A bool field: omitted when False."""
        return self.uint64(field, 1 if value else 0)

    def blob(self, field: int, data: bytes | bytearray, *, always: bool = False) -> Message:
        """A bytes field: omitted when empty unless `always` (a repeated element)."""
        if data or always:
            self._tag(field, LEN)
            encode_varint(len(data), self._buf)
            self._buf += data
        return self

    def string(self, field: int, text: str, *, always: bool = False) -> Message:
        # Lone surrogates (undecodable bytes in a path) cannot be UTF-8: replaced.
        return self.blob(field, text.encode("utf-8", "replace"), always=always)

    def message(self, field: int, sub: Message) -> Message:
        """An embedded message (one element of a repeated message field, or a
        singular one): always written."""
        return self.blob(field, sub._buf, always=True)

    def packed(self, field: int, values: Iterable[int]) -> Message:
        """A packed repeated uint64/int64 field: omitted when empty."""
        body = bytearray()
        small = _SMALL
        for v in values:
            if 0 <= v < _SMALL_LIMIT:
                body += small[v]
            else:
                encode_varint(v, body)
        return self.blob(field, body)

    def __len__(self) -> int:
        return len(self._buf)

    def to_bytes(self) -> bytes:
        return bytes(self._buf)

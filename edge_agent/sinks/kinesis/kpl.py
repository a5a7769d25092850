"""KPL record aggregation: many small user records in one Kinesis record.

The format the KCL and aws-kinesis-agg de-aggregate::

    F3 89 9A C2                       magic
    AggregatedRecord (protobuf)       partition_key_table = 1, explicit_hash_key_table = 2,
                                      records = 3 {partition_key_index = 1,
                                                   explicit_hash_key_index = 2, data = 3}
    MD5 of the protobuf bytes         16 bytes

Written here (about 100 lines) rather than with the protobuf runtime: the message is
three fields deep, the encoder must know the exact size before it adds a record (to
stay under the record limit, which aws-kinesis-agg is reported to overshoot), and the
agent should not load a protobuf runtime for it.

Only records bound for the same shard belong in one aggregate; choosing them is the
sink's job. An aggregate holding a single user record is sent as that plain record, as
the KPL does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

MAGIC = b"\xf3\x89\x9a\xc2"
DIGEST_BYTES = 16
_FRAMING_BYTES = len(MAGIC) + DIGEST_BYTES
#: What ``AggregateBuilder.try_add`` answers when a record does not go in.
FULL = -1
NO_ROOM = -2
#: The KPL's default AggregationMaxSize.
DEFAULT_MAX_AGGREGATE_BYTES = 51_200

_WIRE_VARINT = 0
_WIRE_BYTES = 2


#: One-byte varints, precomputed: indexes and short lengths are almost always below 128.
_SMALL_VARINTS = [bytes((value,)) for value in range(0x80)]
_TAG_PARTITION_KEY_INDEX = bytes((1 << 3 | _WIRE_VARINT,))
_TAG_HASH_KEY_INDEX = bytes((2 << 3 | _WIRE_VARINT,))
_TAG_DATA = bytes((3 << 3 | _WIRE_BYTES,))
_TAG_RECORD = bytes((3 << 3 | _WIRE_BYTES,))


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_size(value: int) -> int:
    size = 1
    while value > 0x7F:
        value >>= 7
        size += 1
    return size


def _tag(field_number: int, wire_type: int) -> bytes:
    return _varint(field_number << 3 | wire_type)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _tag(field_number, _WIRE_BYTES) + _varint(len(payload)) + payload


def _length_delimited_size(payload_size: int) -> int:
    """Bytes a field with numbers 1-15 takes: tag, length, payload."""
    return 1 + _varint_size(payload_size) + payload_size


#: Record headers by (key index, hash key index or -1, data size): records of one size
#: under one key share their header, so it is encoded once.
_HEADERS: dict[tuple[int, int, int], bytes] = {}
_MAX_HEADERS = 4096


def _header(key_index: int, hash_index: int, data_size: int) -> bytes:
    """Tag and length of a Record field, and its fields up to the data bytes."""
    cache_key = (key_index, hash_index, data_size)
    header = _HEADERS.get(cache_key)
    if header is None:
        fields = _TAG_PARTITION_KEY_INDEX + _varint(key_index)
        if hash_index >= 0:
            fields += _TAG_HASH_KEY_INDEX + _varint(hash_index)
        fields += _TAG_DATA + _varint(data_size)
        header = _TAG_RECORD + _varint(len(fields) + data_size) + fields
        if len(_HEADERS) >= _MAX_HEADERS:
            _HEADERS.clear()
        _HEADERS[cache_key] = header
    return header


@dataclass(frozen=True)
class Aggregate:
    """What to put into PutRecords: one Kinesis record."""

    partition_key: str
    explicit_hash_key: str | None
    data: bytes
    user_records: int


@dataclass
class AggregateBuilder:
    """Packs user records into one aggregated record of at most ``max_bytes``.

    ``max_bytes`` counts the whole Kinesis record as the service does: data (magic,
    protobuf, digest) plus the partition key of the aggregate.
    """

    max_bytes: int = DEFAULT_MAX_AGGREGATE_BYTES
    _keys: dict[str, int] = field(default_factory=dict)
    _hash_keys: dict[str, int] = field(default_factory=dict)
    _body: list[bytes] = field(default_factory=list)  # header, data, header, data, ...
    _count: int = 0
    _first: tuple[str, str | None, bytes] | None = None
    _first_key_bytes: int = 0
    _size: int = 0  # protobuf bytes so far

    def __len__(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        """The Kinesis record size so far (data plus partition key); 0 when empty."""
        if self._first is None:
            return 0
        return len(MAGIC) + self._size + DIGEST_BYTES + self._first_key_bytes

    def size_with(self, partition_key: str, data: bytes, explicit_hash_key: str | None) -> int:
        """The Kinesis record size if this user record were added."""
        header, table_bytes = self._encode(partition_key, len(data), explicit_hash_key)
        first_key_bytes = self._first_key_bytes if self._first else len(partition_key.encode())
        return (
            len(MAGIC)
            + self._size
            + table_bytes
            + len(header)
            + len(data)
            + DIGEST_BYTES
            + first_key_bytes
        )

    def add(self, partition_key: str, data: bytes, explicit_hash_key: str | None = None) -> bool:
        """Add a user record; False (nothing added) if it would exceed ``max_bytes``.

        An empty builder always takes the record, whatever its size: the caller checks
        single records against the service's per-record limit.
        """
        return self.try_add(partition_key, data, explicit_hash_key, self.max_bytes) >= 0

    def try_add(
        self, partition_key: str, data: bytes, explicit_hash_key: str | None, room: int
    ) -> int:
        """Add a user record if the Kinesis record stays within ``max_bytes`` and grows
        by at most ``room`` bytes (an empty builder always takes it). Returns by how much
        it grew, or FULL (beyond ``max_bytes``) or NO_ROOM (beyond ``room``): nothing
        added. The hot path of aggregation: the record's header is looked up, and its
        data is copied once, when the aggregate is built."""
        key_index = self._keys.get(partition_key)
        if key_index is not None and explicit_hash_key is None:  # the usual case
            header = _HEADERS.get((key_index, -1, len(data))) or _header(key_index, -1, len(data))
            table_bytes = 0
        else:
            header, table_bytes = self._encode(partition_key, len(data), explicit_hash_key)
        body_grows = table_bytes + len(header) + len(data)
        grows = body_grows
        if self._first is None:
            self._first = (partition_key, explicit_hash_key, data)
            self._first_key_bytes = len(partition_key.encode())
            grows += _FRAMING_BYTES + self._first_key_bytes
        elif _FRAMING_BYTES + self._size + self._first_key_bytes + body_grows > self.max_bytes:
            return FULL
        elif body_grows > room:
            return NO_ROOM
        if table_bytes:
            if partition_key not in self._keys:
                self._keys[partition_key] = len(self._keys)
            if explicit_hash_key is not None and explicit_hash_key not in self._hash_keys:
                self._hash_keys[explicit_hash_key] = len(self._hash_keys)
        self._body += (header, data)
        self._count += 1
        self._size += body_grows
        return grows

    def _encode(
        self, partition_key: str, data_size: int, explicit_hash_key: str | None
    ) -> tuple[bytes, int]:
        """A user record's Record field up to its data (the header), and what adding it
        adds to the key tables (nothing is changed)."""
        table_bytes = 0
        key_index = self._keys.get(partition_key)
        if key_index is None:
            key_index = len(self._keys)
            table_bytes += _length_delimited_size(len(partition_key.encode()))
        hash_index = -1
        if explicit_hash_key is not None:
            hash_index = self._hash_keys.get(explicit_hash_key, -1)
            if hash_index < 0:
                hash_index = len(self._hash_keys)
                table_bytes += _length_delimited_size(len(explicit_hash_key.encode()))
        return _header(key_index, hash_index, data_size), table_bytes

    def build(self) -> Aggregate:
        """The Kinesis record for everything added (a plain record if only one)."""
        if self._first is None:
            raise ValueError("nothing to aggregate")
        key, hash_key, data = self._first
        if self._count == 1:
            return Aggregate(key, hash_key, data, 1)
        tables = b"".join(_length_delimited(1, k.encode()) for k in self._keys)
        tables += b"".join(_length_delimited(2, h.encode()) for h in self._hash_keys)
        protobuf = tables + b"".join(self._body)
        return Aggregate(
            key, hash_key, MAGIC + protobuf + hashlib.md5(protobuf).digest(), self._count
        )

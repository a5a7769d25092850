"""EBML, the binary format under Matroska: elements of (ID, size, payload).

Only what a streaming writer needs: IDs are written as their bytes, sizes as the
shortest variable-length integer, and a master element may have an unknown size
(all ones), which is how a live stream's Segment and Clusters are written when their
length is not known in advance.
"""

from __future__ import annotations

import struct

#: The size field of an element whose size is unknown (8 bytes, all value bits set).
UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def id_bytes(element_id: int) -> bytes:
    """An element ID as written (its marker bit is part of the ID)."""
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")


def size_vint(size: int) -> bytes:
    """The shortest EBML variable-length integer for ``size`` (all-ones is reserved for
    "unknown", so a value needs one more byte when it would fill its length)."""
    if size < 0:
        raise ValueError("negative element size")
    for length in range(1, 9):
        if size < (1 << (7 * length)) - 1:
            return (size | (1 << (7 * length))).to_bytes(length, "big")
    raise ValueError(f"element size {size} does not fit EBML's 8-byte sizes")


def element(element_id: int, payload: bytes) -> bytes:
    return id_bytes(element_id) + size_vint(len(payload)) + payload


def master(element_id: int, *children: bytes) -> bytes:
    return element(element_id, b"".join(children))


def unknown_size_master(element_id: int) -> bytes:
    """The start of a master element whose children follow as a stream."""
    return id_bytes(element_id) + UNKNOWN_SIZE


def uint(element_id: int, value: int) -> bytes:
    if value < 0:
        raise ValueError("EBML unsigned integers are not negative")
    return element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def string(element_id: int, value: str) -> bytes:
    return element(element_id, value.encode())


def binary(element_id: int, value: bytes) -> bytes:
    return element(element_id, value)


def float64(element_id: int, value: float) -> bytes:
    return element(element_id, struct.pack(">d", value))

"""Tensors as raw bytes: the protocol's binary tensor data extension, and gRPC's raw contents. Pure: no I/O.

Over HTTP, a client may send the JSON header followed by each input's bytes
(its ``parameters.binary_data_size`` of them, in order; the header's own length
in the ``Inference-Header-Content-Length`` HTTP header), and may ask for the
outputs the same way. gRPC's ``raw_input_contents`` and ``raw_output_contents``
use the same layout: little-endian values, row-major; a BYTES element is a
4-byte little-endian length followed by its bytes.

>>> import struct
>>> values(decode("FP32", [2], struct.pack("<2f", 0.5, 2.0), "inputs[0] (x)"))
[0.5, 2.0]
>>> values(decode("BYTES", [1], struct.pack("<I", 2) + b"hi", "inputs[1] (s)"))
['hi']
>>> encode("FP64", [0.25, None]) == struct.pack("<2d", 0.25, float("nan"))
True
>>> decode("INT32", [2], b"\\x01\\x00\\x00\\x00", "inputs[0] (x)")
Traceback (most recent call last):
...
rendezvous.gateway.oip.OipError: inputs[0] (x): 4 bytes of INT32 hold 1 value, shape [2] needs 2 (8 bytes)
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from rendezvous.gateway.oip import InferRequest, OipError

__all__ = ["DTYPES", "decode", "encode", "values", "split_body", "attach_binary"]

# The protocol's fixed-size datatypes as numpy dtypes, all little-endian on the wire.
DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(code) for name, code in {
    "BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}.items()}
_LENGTH = struct.Struct("<I")


def decode(datatype: str, shape: list[int], raw: bytes, where: str) -> np.ndarray[Any, Any] | list[str]:
    """The ``math.prod(shape)`` values in ``raw``; :class:`OipError` naming ``where`` if they do not fit."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes(raw, count, where)
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        held = len(raw) / dtype.itemsize
        raise OipError(f"{where}: {len(raw)} bytes of {datatype} hold {held:g} value{'s' if held != 1 else ''}, "
                              f"shape {shape} needs {count} ({count * dtype.itemsize} bytes)")
    array = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL" and raw.translate(None, b"\x00\x01"):
        raise OipError(f"{where}: BOOL bytes must be 0 or 1")
    return array


def _decode_bytes(raw: bytes, count: int, where: str) -> list[str]:
    out: list[str] = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise OipError(f"{where}: BYTES element {len(out)} has a truncated length prefix")
        (size,) = _LENGTH.unpack_from(raw, at)
        element = raw[at + 4:at + 4 + size]
        if len(element) != size:
            raise OipError(f"{where}: BYTES element {len(out)} says {size} bytes, {len(element)} follow")
        try:
            out.append(element.decode())
        except UnicodeDecodeError:
            raise OipError(f"{where}: BYTES element {len(out)} is not UTF-8 text; features are JSON values") from None
        at += 4 + size
    if len(out) != count:
        raise OipError(f"{where}: {len(out)} BYTES elements, the shape needs {count}")
    return out


def values(decoded: np.ndarray[Any, Any] | list[str]) -> list[Any]:
    """Plain Python values (what a JSON ``data`` array would have held)."""
    return decoded if isinstance(decoded, list) else decoded.tolist()


def encode(datatype: str, data: list[Any]) -> bytes:
    """``data`` as raw bytes; a missing FP value (None) becomes NaN."""
    if datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(b)) + b for b in (str(v).encode() for v in data))
    if datatype.startswith("FP"):
        data = [math.nan if v is None else v for v in data]
    return np.asarray(data, dtype=DTYPES[datatype]).tobytes()


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary data after it, by the ``Inference-Header-Content-Length`` header."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise OipError(f"Inference-Header-Content-Length is {header_length!r}: it must be the JSON header's "
                       f"size in bytes, at most the body's {len(body)}")
    size = int(header_length)
    return body[:size], body[size:]


def attach_binary(body: InferRequest, raw: bytes) -> None:
    """Give each input that declares ``parameters.binary_data_size`` its values from ``raw``, in order."""
    at = 0
    for i, tensor in enumerate(body.inputs):
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        where = f"inputs[{i}] ({tensor.name})"
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise OipError(f"{where}: parameters.binary_data_size must be a byte count, got {size!r}")
        if tensor.data is not None:
            raise OipError(f"{where}: both data and parameters.binary_data_size; send the values one way")
        if at + size > len(raw):
            raise OipError(f"{where}: binary_data_size {size} runs past the body's {len(raw)} bytes of binary data "
                           f"(from byte {at}); is Inference-Header-Content-Length the JSON header's size?")
        tensor.data = values(decode(tensor.datatype, tensor.shape, raw[at:at + size], where))
        at += size
    if at != len(raw):
        raise OipError(f"{len(raw) - at} bytes of binary data follow the JSON header that no input's "
                       "parameters.binary_data_size claims")

"""Tiny numpy safetensors reader/writer (format: u64 LE header length, JSON
header padded with spaces to a multiple of 8, raw little-endian data)."""
import json
import struct

import numpy as np

_DT = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
       "I32": np.int32, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_RDT = {np.dtype(v).str: k for k, v in _DT.items()}


def read(path):
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dt = np.dtype(_DT[info["dtype"]]).newbyteorder("<")
        arr = np.frombuffer(buf[base + a:base + b], dtype=dt).reshape(info["shape"])
        out[name] = arr.astype(dt.newbyteorder("="), copy=True)
    return out


def write(path, tensors, metadata=None):
    names = sorted(tensors)
    header = {"__metadata__": metadata or {"format": "pt"}}
    blobs, off = [], 0
    for name in names:
        arr = np.ascontiguousarray(tensors[name])
        key = arr.dtype.newbyteorder("<").str if arr.dtype.byteorder != "|" else arr.dtype.str
        dtype = _RDT[np.dtype(arr.dtype).newbyteorder("<").str] if key not in _RDT else _RDT[key]
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for d in blobs:
            f.write(d)

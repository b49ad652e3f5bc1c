"""Read a saved Core ML ``.mlpackage`` (ML Program) back without running it.

Works on any OS: the package's protobuf spec is parsed with coremltools' own
proto classes and the weight blobs' headers are read from ``weights/weight.bin``.
Nothing is predicted, so nothing here needs macOS.

What it extracts (``inspect_package``):
- every operation of every function (nested blocks included): type, output
  dtypes and shapes, and the names it reads;
- op counts by type (``const`` and ``constexpr_*`` ops are weights, not compute);
- every stored tensor value (``const`` values, ``constexpr_*`` inputs/attributes):
  dtype, shape and the bytes it really occupies (a blob's ``sizeInBytes`` from its
  header in weight.bin, or the packed size of an inline value);
- which of those are model parameters (float weights/biases, and everything a
  ``constexpr_*`` decompression op reads: quantized data, scales, zero points,
  palettes, indices), so bits/parameter comes from the artifact itself;
- the model inputs and whether their shapes are flexible (range/enumerated).
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# MIL DataType name -> bits per element (coremltools/proto MIL_pb2.DataType).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "STRING": 0, "FLOAT8E4M3FN": 8, "FLOAT8E5M2": 8, "FLOAT16": 16, "FLOAT32": 32,
    "FLOAT64": 64, "BFLOAT16": 16, "INT8": 8, "INT16": 16, "INT32": 32, "INT64": 64, "INT4": 4,
    "UINT8": 8, "UINT16": 16, "UINT32": 32, "UINT64": 64, "UINT4": 4, "UINT2": 2, "UINT1": 1,
    "UINT6": 6, "UINT3": 3,
}
FLOAT_DTYPES = frozenset({"FLOAT16", "FLOAT32", "FLOAT64", "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E5M2"})
WEIGHT_OPS = ("const", "constexpr_")  # op types (prefixes) that hold weights, not compute
BLOB_SENTINEL = 0xDEADBEEF
# blob_metadata in MILBlob's storage format: sentinel u32, mil_dtype u32, sizeInBytes u64,
# offset u64 (of the data, from the start of the file), then padding/reserved fields.
_BLOB_HEADER = struct.Struct("<IIQQ")


class PackageError(ValueError):
    """A package that is not a readable ML Program."""


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int | None, ...]  # None: a dimension unknown until run time


@dataclass
class StoredValue:
    """One tensor stored in the package (a weight, a scale, a config constant...)."""

    op: str          # name of the op that holds it (the const's output / the constexpr's output)
    op_type: str     # const | constexpr_affine_dequantize | constexpr_lut_to_dense | ...
    role: str        # "val" for const; the input/attribute name for constexpr ops
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    storage: str     # "blob" (weight.bin) or "inline" (in the protobuf)
    is_param: bool   # counted as a model parameter (see module docstring)
    blob: tuple[str, int] | None = None  # (weight file, header offset) of a blob value

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class OpInfo:
    type: str
    name: str                        # its first output's name
    outputs: list[TensorInfo]
    inputs: dict[str, list[str]]     # argument -> names it binds ("" for inline values)
    function: str


@dataclass
class InputInfo:
    name: str
    dtype: str
    shape: tuple[int | None, ...]
    flexible: str | None  # None | "range: ..." | "enumerated: ..."


@dataclass
class ProgramSummary:
    path: Path
    spec_version: int
    model_type: str
    opsets: dict[str, str]            # function -> opset ("CoreML7", ...)
    inputs: list[InputInfo]
    outputs: list[TensorInfo]
    ops: list[OpInfo]
    values: list[StoredValue]
    const_ints: dict[str, list[int]]  # small integer constants by name (pads, dilations, ...)
    weight_file_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)

    # ---------------------------------------------------------------- views
    @property
    def compute_ops(self) -> list[OpInfo]:
        return [op for op in self.ops if not op.type.startswith(WEIGHT_OPS)]

    def op_counts(self, include_weights: bool = False) -> dict[str, int]:
        ops = self.ops if include_weights else self.compute_ops
        return dict(sorted(Counter(op.type for op in ops).items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def decompression_ops(self) -> list[OpInfo]:
        return [op for op in self.ops if op.type.startswith("constexpr_")]

    @property
    def params(self) -> list[StoredValue]:
        return [v for v in self.values if v.is_param]

    @property
    def param_bits(self) -> int:
        return 8 * sum(v.nbytes for v in self.params)

    @property
    def compressed_values(self) -> list[StoredValue]:
        return [v for v in self.params if v.op_type.startswith("constexpr_")]

    @property
    def dense_float_weights(self) -> list[StoredValue]:
        """Float parameters stored as they are (not behind a decompression op)."""
        return [v for v in self.params if v.op_type == "const" and v.dtype in FLOAT_DTYPES]

    def param_bytes_by_dtype(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for v in self.params:
            out[v.dtype] += v.nbytes
        return dict(sorted(out.items()))

    def output_dtypes(self) -> dict[str, int]:
        """Compute ops counted by the dtype of their first output."""
        return dict(sorted(Counter(op.outputs[0].dtype for op in self.compute_ops
                                   if op.outputs).items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "model_type": self.model_type,
            "spec_version": self.spec_version,
            "opsets": self.opsets,
            "inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape),
                        "flexible": i.flexible} for i in self.inputs],
            "outputs": [{"name": o.name, "dtype": o.dtype, "shape": list(o.shape)}
                        for o in self.outputs],
            "op_counts": self.op_counts(),
            "weight_op_counts": {k: v for k, v in self.op_counts(include_weights=True).items()
                                 if k.startswith(WEIGHT_OPS)},
            "compute_op_output_dtypes": self.output_dtypes(),
            "param_bits": self.param_bits,
            "param_bytes_by_dtype": self.param_bytes_by_dtype(),
            "compressed_bytes": sum(v.nbytes for v in self.compressed_values),
            "compressed_weights": len(self.decompression_ops),
            "dense_float_weights": len(self.dense_float_weights),
            "weight_file_bytes": self.weight_file_bytes,
        }


# ------------------------------------------------------------------ reading
def _dtype_name(code: int) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(code)


def _tensor_shape(value_type) -> tuple[int | None, ...]:
    tt = value_type.tensorType
    return tuple(d.constant.size if d.WhichOneof("dimension") == "constant" else None
                 for d in tt.dimensions)


def _model_dir(package: Path) -> Path:
    """The folder that holds model.mlmodel (what ``@model_path`` means in blob paths)."""
    manifest = package / "Manifest.json"
    if not manifest.is_file():
        raise PackageError(f"{package} is not an .mlpackage (no Manifest.json)")
    info = json.loads(manifest.read_text())
    root = info["itemInfoEntries"][info["rootModelIdentifier"]]["path"]
    return (package / "Data" / root).parent


class _Blobs:
    """Reads blob headers from the package's weight files (cached per file)."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self._files: dict[str, bytes] = {}

    def nbytes(self, file_name: str, offset: int) -> tuple[int, int]:
        """(mil dtype code, size in bytes) of the blob whose header is at ``offset``."""
        if file_name not in self._files:
            path = self.model_dir / file_name.replace("@model_path/", "", 1)
            self._files[file_name] = path.read_bytes()
        data = self._files[file_name]
        if offset + _BLOB_HEADER.size > len(data):
            raise PackageError(f"{file_name}: blob header at {offset} is past the end of the file")
        sentinel, dtype, size, data_offset = _BLOB_HEADER.unpack_from(data, offset)
        if sentinel != BLOB_SENTINEL or data_offset + size > len(data):
            raise PackageError(f"{file_name}: no valid blob at offset {offset}")
        return dtype, size


def read_blob(summary: ProgramSummary, value: StoredValue) -> bytes:
    """The raw stored bytes of a blob value (e.g. int8 weight data) from weight.bin."""
    if value.blob is None:
        raise PackageError(f"{value.op}.{value.role} is stored inline, not in a blob")
    file_name, offset = value.blob
    data = (_model_dir(summary.path) / file_name.replace("@model_path/", "", 1)).read_bytes()
    _, _, size, data_offset = _BLOB_HEADER.unpack_from(data, offset)
    return data[data_offset:data_offset + size]


def _value_bytes(value, dtype: str, shape: tuple[int, ...], blobs: _Blobs) -> tuple[int, str]:
    kind = value.WhichOneof("value")
    if kind == "blobFileValue":
        _, size = blobs.nbytes(value.blobFileValue.fileName, value.blobFileValue.offset)
        return size, "blob"
    bits = DTYPE_BITS.get(dtype, 0) * math.prod(shape)
    return (bits + 7) // 8, "inline"


def _iter_ops(block, function: str) -> Iterator[tuple[Any, str]]:
    for op in block.operations:
        yield op, function
        for inner in op.blocks:  # cond / while_loop bodies
            yield from _iter_ops(inner, function)


def inspect_package(path: str | Path, spec=None) -> ProgramSummary:
    """Parse a saved .mlpackage (``spec``: its already-loaded protobuf, optional)."""
    path = Path(path)
    if spec is None:
        import coremltools as ct

        spec = ct.utils.load_spec(str(path))
    model_type = spec.WhichOneof("Type")
    if model_type != "mlProgram":
        raise PackageError(f"{path}: expected an ML Program, found a {model_type!r} model")
    model_dir = _model_dir(path)
    blobs = _Blobs(model_dir)
    program = spec.mlProgram

    ops: list[OpInfo] = []
    raw: list[tuple[Any, str]] = []
    opsets: dict[str, str] = {}
    outputs_of: list[str] = []
    for fname, function in program.functions.items():
        opsets[fname] = function.opset
        block = function.block_specializations[function.opset]
        outputs_of.extend(block.outputs)
        for op, fn in _iter_ops(block, fname):
            raw.append((op, fn))
            outs = [TensorInfo(o.name, _dtype_name(o.type.tensorType.dataType),
                               _tensor_shape(o.type)) for o in op.outputs]
            inputs = {arg: [b.name for b in binding.arguments] for arg, binding in op.inputs.items()}
            ops.append(OpInfo(op.type, outs[0].name if outs else "", outs, inputs, fn))

    consumers: dict[str, set[str]] = {}
    for op in ops:
        for names in op.inputs.values():
            for name in names:
                if name:
                    consumers.setdefault(name, set()).add(op.type)

    values: list[StoredValue] = []
    const_ints: dict[str, list[int]] = {}
    for (op, _), info in zip(raw, ops):
        if op.type == "const":
            val = op.attributes["val"]
            entries = [("val", val)]
        elif op.type.startswith("constexpr_"):
            # iOS16/17 constexpr ops keep their data in attributes; iOS18 ones take it
            # as inline (or const-bound) inputs.
            entries = [(k, v) for k, v in op.attributes.items() if k != "name"]
            entries += [(arg, b.value) for arg, binding in op.inputs.items()
                        for b in binding.arguments if b.WhichOneof("binding") == "value"]
        else:
            continue
        for role, val in entries:
            if val.type.WhichOneof("type") != "tensorType":
                continue
            dtype = _dtype_name(val.type.tensorType.dataType)
            shape = tuple(d or 0 for d in _tensor_shape(val.type))
            if dtype == "STRING":
                continue
            nbytes, storage = _value_bytes(val, dtype, shape, blobs)
            if op.type == "const":
                feeds_decompression = any(t.startswith("constexpr_")
                                          for t in consumers.get(info.name, ()))
                is_param = len(shape) >= 1 and (dtype in FLOAT_DTYPES or feeds_decompression)
                if (not is_param and dtype.startswith(("INT", "UINT")) and storage == "inline"
                        and math.prod(shape) <= 16):
                    const_ints[info.name] = list(val.immediateValue.tensor.ints.values)
            else:  # everything a decompression op reads is weight data, except its shape/axis
                is_param = len(shape) >= 1 and role not in ("shape",)
            blob = ((val.blobFileValue.fileName, val.blobFileValue.offset)
                    if storage == "blob" else None)
            values.append(StoredValue(info.name, op.type, role, dtype, shape, nbytes, storage,
                                      is_param, blob))

    inputs = []
    feature_in = {f.name: f for f in spec.description.input}
    main = program.functions["main"] if "main" in program.functions else next(
        iter(program.functions.values()))
    for nv in main.inputs:
        feature = feature_in.get(nv.name)
        inputs.append(InputInfo(nv.name, _dtype_name(nv.type.tensorType.dataType),
                                _tensor_shape(nv.type), _flexibility(feature)))
    from coremltools.proto import FeatureTypes_pb2

    array_dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name
    outputs = [TensorInfo(f.name, array_dtype(f.type.multiArrayType.dataType),
                          tuple(f.type.multiArrayType.shape)) for f in spec.description.output]

    weights_dir = model_dir / "weights"
    weight_bytes = sum(p.stat().st_size for p in weights_dir.iterdir()) if weights_dir.is_dir() else 0
    metadata = dict(spec.description.metadata.userDefined)
    return ProgramSummary(path, spec.specificationVersion, model_type, opsets, inputs, outputs,
                          ops, values, const_ints, weight_bytes, metadata)


def _flexibility(feature) -> str | None:
    """How an input's shape may vary: None (static), or a description of the range /
    enumerated shapes the package declares."""
    if feature is None or feature.type.WhichOneof("Type") != "multiArrayType":
        return None
    arr = feature.type.multiArrayType
    kind = arr.WhichOneof("ShapeFlexibility")
    if kind == "shapeRange":
        ranges = [(r.lowerBound, r.upperBound) for r in arr.shapeRange.sizeRanges]
        if all(lo == hi for lo, hi in ranges):
            return None
        return "range " + "x".join(str(lo) if lo == hi else f"[{lo}..{'inf' if hi < 0 else hi}]"
                                   for lo, hi in ranges)
    if kind == "enumeratedShapes":
        shapes = [tuple(s.shape) for s in arr.enumeratedShapes.shapes]
        if len(shapes) <= 1:
            return None
        return "enumerated " + ", ".join("x".join(map(str, s)) for s in shapes)
    return None


__all__ = [
    "DTYPE_BITS",
    "FLOAT_DTYPES",
    "InputInfo",
    "OpInfo",
    "PackageError",
    "ProgramSummary",
    "StoredValue",
    "TensorInfo",
    "inspect_package",
    "read_blob",
]

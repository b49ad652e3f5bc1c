"""Model size: bytes of exported artifacts on disk, and real storage bits of a state_dict.

Owns the "how big is the quantized model" numbers. ``storage_bits`` counts what each stored
tensor really occupies, unpacking torch.ao quantized containers (packed Linear params as
tuples, packed Conv/Embedding/RNN ScriptObjects, quantized tensors with their scales and
zero points) and refusing anything it does not recognise rather than skipping it.

What torch 2.13's torch.ao modules put in ``state_dict()``:
- quantized Linear (static and dynamic): ``<m>._packed_params._packed_params`` = tuple
  (weight, bias|None) with a sibling ``<m>._packed_params.dtype`` (torch.qint8 or
  torch.float16); for float16 the weight comes back *unpacked to float32* although it is
  stored as fp16, so the sibling dtype decides. ``<m>.scale``/``<m>.zero_point`` are scalar
  output-activation qparams (also present, unused, for dynamic Linear).
- quantized Conv: ``weight`` (qtensor, per-channel with x86 qconfig) and ``bias`` (float).
- dynamic LSTM/GRU: ``_all_weight_values.N.param`` = ``rnn.CellParamsBase`` ScriptObjects whose
  state holds the biases *and* ``quantized.LinearPackedParamsBase`` objects that hold the same
  bias storages again (counted once: tensors are de-duplicated by storage).
- dynamic RNN/LSTM/GRU cells: ``_packed_weight_ih``/``_packed_weight_hh`` LinearPackedParamsBase.
- quantized Embedding(Bag): ``_packed_params._packed_weight`` qtensor
  (per_channel_affine_float_qparams, quint8 or packed quint4x2) plus a ``dtype`` sibling.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Leaf names of BatchNorm running statistics: buffers, not parameters.
_BN_BUFFERS = frozenset({"running_mean", "running_var", "num_batches_tracked"})
# Scalar activation qparams stored as module attributes, e.g. ``scale``, ``zero_point``,
# FX's ``conv_input_scale_0`` / ``conv_input_zero_point_0``.
_SCALAR_QPARAM = re.compile(r"(^|_)(scale|zero_point)(_\d+)?$")
_CONV_PACKED = re.compile(r"\.quantized\.Conv(Transpose)?\d?d?PackedParamsBase$")


@dataclass(frozen=True)
class StorageReport:
    """Real storage of a state_dict, split into parameters and other buffers.

    ``param_bits``: weights and biases including their quantization scales/zero points.
    ``other_bits``: non-parameter buffers (index buffers, activation qparams, BN stats,
    observer state, serialization metadata). ``per_dtype``: bytes per storage dtype name.
    """

    param_bits: int
    other_bits: int
    total_bytes: int
    per_dtype: dict[str, int]
    n_tensors: int
    other_keys: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {
            "param_bits": self.param_bits,
            "other_bits": self.other_bits,
            "total_bytes": self.total_bytes,
            "per_dtype": dict(self.per_dtype),
            "n_tensors": self.n_tensors,
            "other_keys": list(self.other_keys),
        }


class UnsupportedStateError(TypeError):
    """A state_dict entry whose storage cannot be accounted for."""


def path_size_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a file, or the recursive sum of the files in a directory.

    ``path`` itself is resolved if it is a link; links inside a directory are not followed
    (their own size is counted), so a link can't double-count what it points to.
    """
    p = Path(path)
    st = p.stat()  # raises FileNotFoundError for a missing path
    if not p.is_dir():
        return st.st_size
    total = 0
    for root, dirs, files in os.walk(p, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _Accumulator:
    def __init__(self) -> None:
        self.bits: dict[str, int] = {"param": 0, "other": 0}
        self.per_dtype: dict[str, int] = defaultdict(int)
        self.n_tensors = 0
        self._seen: set[tuple[int, int, torch.dtype]] = set()
        # Unpacking creates temporaries; holding them keeps their addresses from being
        # reused by later temporaries, which would make the de-duplication merge them.
        self._alive: list[torch.Tensor] = []

    def _add_bytes(self, bucket: str, dtype_name: str, nbytes: int) -> None:
        self.bits[bucket] += nbytes * 8
        self.per_dtype[dtype_name] += nbytes

    def _first_time(self, t: torch.Tensor) -> bool:
        """False if this exact storage range was already counted (tied/aliased tensors)."""
        if t.numel() == 0 or t.device.type == "meta":
            return True
        key = (t.data_ptr(), t.numel() * t.element_size(), t.dtype)
        if key[0] == 0:
            return True
        if key in self._seen:
            return False
        self._seen.add(key)
        self._alive.append(t)
        return True

    def add_tensor(
        self, where: str, t: torch.Tensor, bucket: str, *, fp16_storage: bool = False
    ) -> None:
        cls = type(t)
        if cls not in (torch.Tensor, torch.nn.Parameter) and hasattr(
            cls, "__tensor_flatten__"
        ):
            # Traceable wrapper subclasses (e.g. torchao quantized tensors) report a logical
            # shape; their real storage is in the inner tensors.
            inner_names, _ctx = t.__tensor_flatten__()
            for name in inner_names:
                self.add_tensor(
                    f"{where}.{name}",
                    getattr(t, name),
                    bucket,
                    fp16_storage=fp16_storage,
                )
            return
        if t.layout != torch.strided:
            raise UnsupportedStateError(
                f"{where}: tensor layout {t.layout} is not supported (dtype {t.dtype})"
            )
        if not self._first_time(t):
            return
        self.n_tensors += 1
        if t.is_quantized:
            self._add_quantized(where, t, bucket)
        elif fp16_storage and t.is_floating_point():
            # fbgemm's fp16 packed Linear stores the weight in fp16 but unpacks it as fp32.
            self._add_bytes(bucket, "float16", t.numel() * 2)
        else:
            self._add_bytes(bucket, _dtype_name(t.dtype), t.numel() * t.element_size())

    def _add_quantized(self, where: str, t: torch.Tensor, bucket: str) -> None:
        # int_repr() has the real packed size (quint4x2 packs two values per byte).
        data = t.int_repr()
        self._add_bytes(
            bucket, _dtype_name(t.dtype), data.numel() * data.element_size()
        )
        scheme = t.qscheme()
        if scheme == torch.per_tensor_affine:
            # The quantizer holds one double scale and one int64 zero point.
            self._add_bytes(bucket, "float64", 8)
            self._add_bytes(bucket, "int64", 8)
        elif scheme in (
            torch.per_channel_affine,
            torch.per_channel_affine_float_qparams,
        ):
            for qp in (t.q_per_channel_scales(), t.q_per_channel_zero_points()):
                self._add_bytes(
                    bucket, _dtype_name(qp.dtype), qp.numel() * qp.element_size()
                )
        else:
            raise UnsupportedStateError(
                f"{where}: quantized tensor with qscheme {scheme} is not supported"
            )

    def add_linear_packed(
        self, where: str, weight: object, bias: object, *, fp16: bool
    ) -> None:
        if not isinstance(weight, torch.Tensor) or not (
            bias is None or isinstance(bias, torch.Tensor)
        ):
            raise UnsupportedStateError(
                f"{where}: expected packed Linear params (weight Tensor, bias Tensor|None), "
                f"got ({type(weight).__name__}, {type(bias).__name__})"
            )
        self.add_tensor(f"{where}.weight", weight, "param", fp16_storage=fp16)
        if bias is not None:
            self.add_tensor(f"{where}.bias", bias, "param")

    def add_value(self, where: str, value: object, bucket: str) -> None:
        """Packed containers: tuples/lists and torch.ao ScriptObjects, walked recursively."""
        if value is None:
            return
        if isinstance(value, torch.Tensor):
            self.add_tensor(where, value, bucket)
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                self.add_value(f"{where}[{i}]", item, bucket)
        elif isinstance(value, torch.ScriptObject):
            self._add_script_object(where, value)
        else:
            raise UnsupportedStateError(
                f"{where}: cannot account for value of type {type(value).__qualname__}"
            )

    def _add_script_object(self, where: str, obj: torch.ScriptObject) -> None:
        qualname = obj._type().qualified_name()
        if qualname.endswith(".quantized.LinearPackedParamsBase"):
            weight, bias = obj.unpack()
            # Only the fbgemm fp16 packing unpacks to a float weight (int8 packings give qint8).
            self.add_linear_packed(where, weight, bias, fp16=weight.is_floating_point())
        elif _CONV_PACKED.search(qualname):
            weight, bias = obj.unpack()
            self.add_tensor(f"{where}.weight", weight, "param")
            if bias is not None:
                self.add_tensor(f"{where}.bias", bias, "param")
        elif qualname.endswith(".quantized.EmbeddingPackedParamsBase"):
            self.add_tensor(f"{where}.weight", obj.unpack(), "param")
        elif qualname.endswith(".rnn.CellParamsBase"):
            state = obj.__getstate__()
            # The Python binding returns (state, qualified class name).
            if len(state) == 2 and isinstance(state[1], str):
                state = state[0]
            kind, tensors, _doubles, _longs, packed = state
            if kind not in ("quantized_dynamic", "quantized_fp16"):
                raise UnsupportedStateError(
                    f"{where}: rnn.CellParamsBase of kind {kind!r} is not supported"
                )
            # tensors = biases (aliases of the packed biases, de-duplicated); the doubles/longs
            # are configuration (reduce_range), not stored weights.
            self.add_value(f"{where}.tensors", list(tensors), "param")
            for i, p in enumerate(packed):
                self.add_value(f"{where}.packed[{i}]", p, "param")
        else:
            raise UnsupportedStateError(f"{where}: unsupported ScriptObject {qualname}")


def _default_bucket(key: str, t: torch.Tensor) -> str:
    parts = key.split(".")
    leaf = parts[-1]
    if any(
        p.startswith("activation_post_process")
        or p.endswith(("_fake_quant", "_observer"))
        for p in parts
    ):
        # Observer / fake-quant state of a prepared (not yet converted) model.
        return "other"
    if "quant_state" in parts or leaf == "weight_format":
        # bitsandbytes' serialized JSON metadata (4-bit) and the layout flag of
        # Linear8bitLt (a uint8 scalar): metadata, not stored weights.
        return "other"
    if leaf in _BN_BUFFERS:
        return "other"
    if not t.is_quantized and t.numel() == 1 and _SCALAR_QPARAM.search(leaf):
        return "other"  # activation scale / zero point of a quantized module
    if not t.is_quantized and not t.is_floating_point() and "weight" not in key:
        # Integer/bool tensors that are not (packed) weights: index buffers (position_ids,
        # token_type_ids), masks. Integer weights (bitsandbytes int8/uint8) stay params.
        return "other"
    return "param"


def storage_bits(
    state_dict: Mapping[str, object],
    *,
    param_keys: Collection[str] | None = None,
    buffer_keys: Collection[str] | None = None,
) -> StorageReport:
    """Count the real stored bits of every entry of ``state_dict``.

    Top-level tensors are classified as parameter or other buffer by name and dtype
    heuristics (see ``_default_bucket``); ``param_keys``/``buffer_keys`` (e.g. from
    ``named_parameters()``/``named_buffers()``) override them per key. Everything inside
    packed quantized params counts as parameter. Tensors sharing storage count once.
    Raises ``UnsupportedStateError`` naming the key for anything it cannot account for.
    """
    param_keys = frozenset(param_keys or ())
    buffer_keys = frozenset(buffer_keys or ())
    acc = _Accumulator()
    other_keys: list[str] = []

    for key, value in state_dict.items():
        if isinstance(value, torch.dtype):
            continue  # the ``dtype`` sibling of packed params: metadata, no storage
        if isinstance(value, torch.Tensor):
            if key in param_keys:
                bucket = "param"
            elif key in buffer_keys:
                bucket = "other"
            else:
                bucket = _default_bucket(key, value)
            if bucket == "other":
                other_keys.append(key)
            acc.add_tensor(key, value, bucket)
        elif isinstance(value, (tuple, list)):
            sibling = key[: key.rfind(".") + 1] + "dtype"
            packed_dtype = state_dict.get(sibling)
            if isinstance(packed_dtype, torch.dtype):
                # torch.ao LinearPackedParams: (weight, bias) with the storage dtype beside it.
                if len(value) != 2:
                    raise UnsupportedStateError(
                        f"{key}: packed params next to {sibling}={packed_dtype} should be "
                        f"(weight, bias), got {type(value).__name__} of length {len(value)}"
                    )
                acc.add_linear_packed(
                    key, value[0], value[1], fp16=packed_dtype == torch.float16
                )
            else:
                acc.add_value(key, value, "param")
        elif isinstance(value, torch.ScriptObject):
            acc.add_value(key, value, "param")
        else:
            raise UnsupportedStateError(
                f"{key}: cannot account for state_dict value of type {type(value).__qualname__}"
            )

    total_bits = acc.bits["param"] + acc.bits["other"]
    return StorageReport(
        param_bits=acc.bits["param"],
        other_bits=acc.bits["other"],
        total_bytes=total_bits // 8,
        per_dtype=dict(acc.per_dtype),
        n_tensors=acc.n_tensors,
        other_keys=tuple(other_keys),
    )


def bits_per_parameter(
    state_dict: Mapping[str, object],
    num_fp32_params: int,
    *,
    param_keys: Collection[str] | None = None,
    buffer_keys: Collection[str] | None = None,
) -> float:
    """Stored parameter bits (quantization overhead included) per original fp32 parameter.

    32.0 exactly for an fp32 model whose state_dict holds only its parameters.
    """
    if num_fp32_params <= 0:
        raise ValueError(f"num_fp32_params must be > 0, got {num_fp32_params}")
    report = storage_bits(state_dict, param_keys=param_keys, buffer_keys=buffer_keys)
    return report.param_bits / num_fp32_params

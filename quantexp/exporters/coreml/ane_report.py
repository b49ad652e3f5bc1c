"""Apple Neural Engine compatibility report for a saved Core ML ML Program.

A static reading of the package (``quantexp.exporters.coreml.mlprogram``): which ops and
shapes the Neural Engine is known not to run, fp32 compute left in the graph,
dynamic input shapes. It says what is *eligible*, not where Core ML will place
each op: placement is decided on the device when the model is compiled, and can
only be observed on macOS (Core ML's MLComputePlan or Xcode's performance
report). Apple does not publish the ANE's op set; every rule below names where
it comes from, and none of them is a guarantee.

Severity: ``blocker`` (the model as a whole will not use the ANE as configured),
``fallback`` (these ops are expected to run on the CPU/GPU, splitting the graph),
``info`` (facts worth knowing, no fallback implied).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantexp.exporters.coreml.mlprogram import FLOAT_DTYPES, OpInfo, ProgramSummary
from quantexp.files import atomic_write_text

SOURCES = {
    "flexible": "Apple engineer on developer.apple.com/forums/thread/724930: with range "
                "flexibility the ANE runs only the input's default shape; other shapes run on "
                "GPU or CPU (enumerated shapes can each run on the ANE)",
    "fp16": "coremltools docs, Typed Execution Workflow Example: an fp16-typed ML program is "
            "eligible for the Neural Engine, GPU and CPU, an fp32-typed one runs on GPU and CPU "
            "(apple.github.io/coremltools/docs-guides/source/typed-execution-example.html)",
    "fp16_only": "community measurements: the ANE uses float16 for everything "
                 "(github.com/hollance/neural-engine docs/16-bit.md); the M1 ANE compiler "
                 "rejects a cast to int32 (ane-guide.readthedocs.io ch. 17)",
    "hollance": "community measurements, github.com/hollance/neural-engine "
                "docs/unsupported-layers.md (RNN layers, gather, dilated convolutions)",
    "rfdetr": "MLComputePlan measurements on M3 Pro, github.com/roboflow/rf-detr PR #1495 "
              "(topk, gather_along_axis left the ANE)",
    "dims": "community measurements on M1, ane-guide.readthedocs.io ch. 17 (width/height "
            "at most 16384, channels at most 65536)",
    "w8a8": "coremltools docs, Optimization API Overview: quantizing activations as well as "
            "weights lets a model use the int8-int8 compute available on the Neural Engine from "
            "iPhone 15 Pro (A17 Pro) onwards (apple.github.io/coremltools/docs-guides/source/"
            "opt-quantization-api.html)",
    "weights2gb": "ANE compiler error 'Weight file size exceeds the maximum (2147483648 "
                  "bytes)', quoted in github.com/apple/coremltools PR #2593",
}

# MIL op types known to leave the ANE, with the source of that knowledge.
UNSUPPORTED_OPS: dict[str, str] = {
    "lstm": "hollance", "gru": "hollance", "rnn": "hollance",
    "gather": "hollance", "gather_nd": "hollance", "gather_along_axis": "rfdetr",
    "topk": "rfdetr",
}
MAX_SPATIAL = 16384
MAX_CHANNELS = 65536
MAX_WEIGHT_FILE = 2 ** 31
FLOAT_ON_ANE = frozenset({"FLOAT16"})
ACTIVATION_QUANT_OPS = frozenset({"quantize", "dequantize"})


@dataclass
class Finding:
    check: str
    severity: str                  # blocker | fallback | info
    message: str
    ops: dict[str, int] = field(default_factory=dict)   # op type -> count involved
    examples: list[str] = field(default_factory=list)   # a few op / input names
    source: str = ""


@dataclass
class AneReport:
    package: str
    compute_units: str
    compute_precision: str
    deployment_target: str
    compute_ops: int
    ops_flagged: int
    verdict: str
    findings: list[Finding]
    op_counts: dict[str, int]
    inputs: list[dict[str, Any]]
    placement: str

    @property
    def eligible_fraction(self) -> float:
        return 1.0 - self.ops_flagged / self.compute_ops if self.compute_ops else 0.0

    def checks(self) -> set[str]:
        return {f.check for f in self.findings}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["eligible_fraction"] = self.eligible_fraction
        out["sources"] = SOURCES
        return out

    def to_markdown(self) -> str:
        lines = [f"# ANE compatibility report: {Path(self.package).name}", "",
                 f"- verdict: **{self.verdict}**",
                 (f"- compute ops: {self.compute_ops}; flagged: {self.ops_flagged} "
                  f"({100 * (1 - self.eligible_fraction):.1f}%)"),
                 (f"- compute units: {self.compute_units}; compute precision: "
                  f"{self.compute_precision}; deployment target: {self.deployment_target}"),
                 f"- placement: {self.placement}", "", "## Findings", ""]
        if not self.findings:
            lines.append("none")
        for f in self.findings:
            ops = ", ".join(f"{k} x{v}" for k, v in f.ops.items())
            lines.append(f"- [{f.severity}] {f.check}: {f.message}" + (f" ({ops})" if ops else ""))
            if f.examples:
                lines.append(f"  - e.g. {', '.join(f.examples)}")
            if f.source:
                lines.append(f"  - basis: {SOURCES.get(f.source, f.source)}")
        lines += ["", "## Inputs", ""]
        for i in self.inputs:
            lines.append(f"- {i['name']}: {i['dtype']} {i['shape']}"
                         + (f" (flexible: {i['flexible']})" if i["flexible"] else " (static)"))
        lines += ["", "## Compute ops by type", ""]
        lines += [f"- {k}: {v}" for k, v in self.op_counts.items()]
        return "\n".join(lines) + "\n"

    def write(self, stem: Path) -> dict[str, Path]:
        """``<stem>.ane_report.json`` and ``.md``; returns {name: path}."""
        json_path = stem.with_name(stem.name + ".ane_report.json")
        md_path = stem.with_name(stem.name + ".ane_report.md")
        atomic_write_text(json_path, json.dumps(self.to_dict(), indent=2) + "\n")
        atomic_write_text(md_path, self.to_markdown())
        return {json_path.name: json_path, md_path.name: md_path}


def _examples(ops: list[OpInfo], n: int = 5) -> list[str]:
    return [f"{op.type}:{op.name}" for op in ops[:n]]


def _count(ops: list[OpInfo]) -> dict[str, int]:
    return dict(Counter(op.type for op in ops).most_common())


def ane_report(summary: ProgramSummary, compute_units: str, compute_precision: str,
               deployment_target: str, not_placed_reason: str | None = None) -> AneReport:
    """Check ``summary`` against what the ANE is known to run."""
    findings: list[Finding] = []
    flagged: dict[int, OpInfo] = {}
    compute = summary.compute_ops

    if compute_units in ("cpu_only", "cpu_and_gpu"):
        findings.append(Finding("compute_units", "blocker",
                                f"compute_units={compute_units} excludes the Neural Engine; "
                                "Core ML will not use it (a load-time option, not stored in the "
                                "package)"))

    flexible = [i for i in summary.inputs if i.flexible or any(d is None for d in i.shape)]
    if flexible:
        findings.append(Finding(
            "dynamic_shape", "blocker",
            "flexible input shapes: only the default shape of a range can run on the ANE",
            examples=[f"{i.name} {i.flexible or list(i.shape)}" for i in flexible],
            source="flexible"))

    fp32 = [op for op in compute if op.outputs and op.outputs[0].dtype in FLOAT_DTYPES
            and op.outputs[0].dtype not in FLOAT_ON_ANE]
    if fp32:
        findings.append(Finding("fp32_compute", "fallback",
                                f"{len(fp32)} compute ops produce {fp32[0].outputs[0].dtype} "
                                "tensors; the ANE computes in fp16, so these run on CPU/GPU",
                                _count(fp32), _examples(fp32), "fp16"))
        flagged.update((id(op), op) for op in fp32)

    # Activation quantize ops (W8A8) produce int8 tensors by design: reported below, not here.
    integer = [op for op in compute if op.outputs and op.outputs[0].dtype not in FLOAT_DTYPES
               and op.outputs[0].dtype != "STRING" and op.type not in ACTIVATION_QUANT_OPS]
    if integer:
        findings.append(Finding("non_float_compute", "fallback",
                                f"{len(integer)} compute ops produce integer/bool tensors "
                                "(index, mask or shape arithmetic); the ANE computes fp16 "
                                "activations, so these are expected on the CPU",
                                _count(integer), _examples(integer), "fp16_only"))
        flagged.update((id(op), op) for op in integer)

    for op_type, source in UNSUPPORTED_OPS.items():
        hits = [op for op in compute if op.type == op_type]
        if hits:
            findings.append(Finding("unsupported_op", "fallback",
                                    f"{op_type} is known not to run on the ANE",
                                    {op_type: len(hits)}, _examples(hits), source))
            flagged.update((id(op), op) for op in hits)

    dilated = [op for op in compute if op.type in ("conv", "conv_transpose")
               and any(d != 1 for d in _ints(summary, op, "dilations"))]
    if dilated:
        findings.append(Finding("dilated_conv", "fallback",
                                "dilated convolutions are reported not to run on the ANE",
                                _count(dilated), _examples(dilated), "hollance"))
        flagged.update((id(op), op) for op in dilated)

    large = [op for op in compute if op.outputs and _too_large(op.outputs[0].shape)]
    if large:
        findings.append(Finding("large_dimension", "fallback",
                                f"tensors with a spatial axis > {MAX_SPATIAL} or channels > "
                                f"{MAX_CHANNELS} are rejected by the ANE compiler",
                                _count(large), _examples(large), "dims"))
        flagged.update((id(op), op) for op in large)

    if summary.weight_file_bytes > MAX_WEIGHT_FILE:
        findings.append(Finding("weight_file_size", "blocker",
                                f"weights are {summary.weight_file_bytes / 2**30:.2f} GiB; the "
                                "ANE compiler refuses weight files over 2 GiB", source="weights2gb"))

    act_quant = [op for op in compute if op.type in ACTIVATION_QUANT_OPS]
    if summary.decompression_ops:
        findings.append(Finding("compressed_weights", "info",
                                f"{len(summary.decompression_ops)} weights are stored compressed "
                                "(int8/palettized/int4 data + scales) and decompressed for compute"
                                + ("" if act_quant else "; activations stay fp16 (weight-only)"),
                                _count(summary.decompression_ops)))
    if act_quant:
        findings.append(Finding("activation_quantization", "info",
                                f"{len(act_quant)} activation quantize/dequantize ops (W8A8): "
                                "int8-int8 compute is available on the Neural Engine from "
                                "iPhone 15 Pro (A17 Pro) onwards; earlier ones are not "
                                "documented to gain from it",
                                _count(act_quant), _examples(act_quant), "w8a8"))

    blockers = [f for f in findings if f.severity == "blocker"]
    if blockers:
        verdict = "not expected on the ANE as configured: " + ", ".join(f.check for f in blockers)
    elif flagged:
        verdict = (f"partly eligible: {len(flagged)} of {len(compute)} compute ops are expected "
                   "off the ANE")
    else:
        verdict = "eligible: no known ANE blockers found"
    placement = ("static eligibility only; actual placement is decided by Core ML when the model "
                 "is compiled on the device")
    if not_placed_reason:
        placement += f"; not measured on this host: {not_placed_reason}"
    return AneReport(
        package=str(summary.path), compute_units=compute_units, compute_precision=compute_precision,
        deployment_target=deployment_target, compute_ops=len(compute), ops_flagged=len(flagged),
        verdict=verdict, findings=findings, op_counts=summary.op_counts(),
        inputs=[{"name": i.name, "dtype": i.dtype, "shape": list(i.shape), "flexible": i.flexible}
                for i in summary.inputs],
        placement=placement)


def _ints(summary: ProgramSummary, op: OpInfo, arg: str) -> list[int]:
    names = op.inputs.get(arg, [])
    return summary.const_ints.get(names[0], []) if names else []


def _too_large(shape: tuple[int | None, ...]) -> bool:
    dims = [d for d in shape if d is not None]
    if len(dims) >= 3:  # (.., C, H, W): channels, then spatial axes
        return dims[-3] > MAX_CHANNELS or dims[-1] > MAX_SPATIAL or dims[-2] > MAX_SPATIAL
    return any(d > MAX_SPATIAL for d in dims)


__all__ = ["SOURCES", "UNSUPPORTED_OPS", "AneReport", "Finding", "ane_report"]

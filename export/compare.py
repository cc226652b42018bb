"""Stage-by-stage comparison of an engine directory with PyTorch (``jfdeploy check``).

Polygraphy-style: each stage runs the same random inputs through the PyTorch stage module and the
engine's runner; the result is an object that is truthy when every output is within tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from jfdeploy.export import specs
from jfdeploy.stages import STAGE_TYPES, build_stages

# default tolerances by engine precision: (atol, rtol); fp16 graphs run in half precision
TOLERANCE = {"fp32": (1e-3, 1e-3), "fp16": (1e-1, 5e-2)}


@dataclass
class OutputError:
    name: str
    max_abs: float
    max_rel: float  # max |a - b| / max |b|
    ok: bool


@dataclass
class StageComparison:
    stage: str
    outputs: list[OutputError] = field(default_factory=list)

    def __bool__(self) -> bool:
        return all(o.ok for o in self.outputs)


def compare_stages(model, runners, size: specs.Size, *, atol: float, rtol: float) -> list[StageComparison]:
    """Run every stage of ``model`` (PyTorch, float32) and of ``runners`` on the same inputs at ``size``."""
    stages = build_stages(model.eval())
    results = []
    for stage in STAGE_TYPES:
        inputs = specs.example_inputs(stage, size, seed=1)
        with torch.no_grad():
            expected = stages[stage](*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = runners[stage](*(t.to(next(model.parameters()).device) for t in inputs))
        got = got if isinstance(got, tuple) else (got,)
        comparison = StageComparison(stage)
        for name, a, b in zip(specs.output_names(stage), got, expected, strict=True):
            diff = (a.float().cpu() - b.float().cpu()).abs().max().item()
            scale = b.float().abs().max().item() or 1.0
            comparison.outputs.append(OutputError(name, diff, diff / scale, diff <= atol + rtol * scale))
        results.append(comparison)
    return results


def format_table(results: list[StageComparison]) -> str:
    lines = ["| stage | output | max abs error | max rel error | ok |", "| --- | --- | --- | --- | --- |"]
    for comparison in results:
        for o in comparison.outputs:
            lines.append(
                f"| {comparison.stage} | {o.name} | {o.max_abs:.2e} | {o.max_rel:.2e} | {'yes' if o.ok else 'NO'} |"
            )
    return "\n".join(lines)

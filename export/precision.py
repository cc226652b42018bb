"""fp16 ONNX graphs with the numerically fragile parts kept in fp32.

TensorRT 11 builds strongly typed networks only (and TensorRT 10 does too when asked), so the
precision must be written into the graph. The fp32 export is converted by onnxconverter-common
(a maintained converter; no hand-written graph rewrite) with these kept in fp32:

- LayerNormalization (fp16 LayerNorm after attention overflows: a known TensorRT accuracy trap),
  Softmax, the reductions of CBAM/aggregation, TopK and ScatterElements;
- the whole top-k *score path*: every node between a score MatMul (q @ k^T) and the TopK / Softmax
  it feeds, so that the top-k selection compares fp32 scores.

Everything else (the matrix products, convolutions, MLPs, GELU) runs in fp16; graph inputs and
outputs become fp16 (boolean masks stay boolean).
"""

from __future__ import annotations

import warnings

from jfdeploy.errors import JfDeployError

FP32_OPS = ["LayerNormalization", "Softmax", "TopK", "ScatterElements", "ReduceMean", "ReduceMax", "ReduceSum"]
# ops that may sit between a score MatMul and the TopK/Softmax consuming the scores
SCORE_PATH_OPS = {"Mul", "Div", "Where", "Slice", "Split", "Reshape", "Transpose", "Concat", "Squeeze", "Unsqueeze"}


def score_path_nodes(graph) -> list[str]:
    """Names of the nodes from each score MatMul to the TopK / Softmax that consumes its scores."""
    producer = {output: node for node in graph.node for output in node.output}
    keep: set[str] = set()
    stack = [producer[node.input[0]] for node in graph.node if node.op_type in ("TopK", "Softmax")
             if node.input[0] in producer]  # fmt: skip
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        if node.op_type == "MatMul":
            keep.add(node.name)
            continue
        if node.op_type not in SCORE_PATH_OPS:
            continue
        keep.add(node.name)
        stack.extend(producer[name] for name in node.input if name in producer)
    return sorted(keep)


def to_fp16(model):
    """An fp16 copy of the fp32 ONNX ``model`` (see the module docstring for what stays fp32)."""
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise JfDeployError("fp16 export needs onnxconverter-common: pip install 'jfdeploy[onnx]'") from exc
    for i, node in enumerate(model.graph.node):  # the converter blocks nodes by name
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    with warnings.catch_warnings():
        # weights below fp16's range are flushed to +-1e-7: expected, reported per value otherwise
        warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
        return float16.convert_float_to_float16(
            model,
            keep_io_types=False,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + FP32_OPS,
            node_block_list=score_path_nodes(model.graph),
        )

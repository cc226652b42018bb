"""Which ONNX nodes TensorRT's ONNX parser accepts: a table and a checker that need no TensorRT.

Source: onnx-tensorrt ``docs/operators.md`` (branch 10.1-GA, the parser of TensorRT 10.x) and the
TensorRT 11 ONNX opset guide. TensorRT 10.0 parses
opsets 9..20, TensorRT 11 up to 25. Only the operators jfdeploy's graphs can contain are listed,
with the restrictions the parser documents for them; a node of any other type is reported.
"""

from __future__ import annotations

TABLE_SOURCE = "onnx-tensorrt 10.1-GA docs/operators.md; TensorRT 11 ONNX opset guide"
OPSET_RANGE = (9, 20)  # TensorRT 10.0 (11.x: up to 25)
MAX_RANK = 8
TOPK_MAX_K = 3840  # K must be < 3840
RESIZE_MODES = {"nearest", "linear", "cubic"}
RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"}

SUPPORTED = {
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip",
    "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "CumSum", "Div", "Dropout",
    "Einsum", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND",
    "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "Identity",
    "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax",
    "MatMul", "Max", "MaxPool", "Min", "Mod", "Mul", "Neg", "NonZero", "Not", "Or", "Pad", "Pow", "Range",
    "Reciprocal", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "Relu",
    "Reshape", "Resize", "ScatterElements", "ScatterND", "Shape", "Sigmoid", "Sign", "Sin", "Slice", "Softmax",
    "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze",
    "Where", "Xor",
}  # fmt: skip
# inputs that must be constants (initializers or Constant nodes): op -> input indices
CONSTANT_INPUTS = {"Slice": (3,), "Squeeze": (1,), "Unsqueeze": (1,), "ReduceSum": (1,), "TopK": (1,)}
BOOL = 9  # onnx.TensorProto.BOOL


def _attribute(node, name, default=None):
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def check_graph(model) -> list[str]:
    """Problems TensorRT's ONNX parser would have with ``model`` (an onnx.ModelProto); [] = none."""
    import onnx
    from onnx import numpy_helper

    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= 25:
        problems.append(f"opset {opset} outside what TensorRT parses ({OPSET_RANGE[0]}..25)")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type for v in [*inferred.graph.value_info, *inferred.graph.input,
                                                   *inferred.graph.output]}  # fmt: skip
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(_attribute(node, "value"))
    for node in model.graph.node:
        where = f"{node.op_type} node {node.name or '?'}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r} needs a plugin")
            continue
        if node.op_type not in SUPPORTED:
            problems.append(f"{where}: operator not in the TensorRT ONNX parser table")
            continue
        for index in CONSTANT_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] and node.input[index] not in constants:
                problems.append(f"{where}: input {index} ({node.input[index]}) must be a constant")
        if node.op_type == "TopK":
            k = constants.get(node.input[1])
            if k is not None and int(k.reshape(-1)[0]) >= TOPK_MAX_K:
                problems.append(f"{where}: K = {int(k.reshape(-1)[0])} must be < {TOPK_MAX_K}")
            if _attribute(node, "sorted", 1) != 1:
                problems.append(f"{where}: sorted must be 1")
        if node.op_type == "Resize":
            if _attribute(node, "mode", "nearest") not in RESIZE_MODES:
                problems.append(f"{where}: mode {_attribute(node, 'mode')} unsupported")
            if _attribute(node, "coordinate_transformation_mode", "half_pixel") not in RESIZE_COORDINATES:
                problems.append(f"{where}: coordinate mode {_attribute(node, 'coordinate_transformation_mode')}")
            if _attribute(node, "antialias", 0):
                problems.append(f"{where}: antialias unsupported")
        if node.op_type == "ScatterElements":
            data = types.get(node.input[0])
            if data is not None and data.elem_type == BOOL:
                problems.append(f"{where}: BOOL data unsupported")
            if _attribute(node, "reduction", "none") != "none":
                problems.append(f"{where}: reduction unsupported")
        for name in node.output:
            tensor = types.get(name)
            if tensor is not None and tensor.HasField("shape") and len(tensor.shape.dim) > MAX_RANK:
                problems.append(f"{where}: output {name} has rank {len(tensor.shape.dim)} > {MAX_RANK}")
    return problems

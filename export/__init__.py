"""ONNX / TensorRT export of the stage modules (installed as ``jfdeploy.export``)."""

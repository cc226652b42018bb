"""ONNX / TensorRT export of the stage modules (installed as ``jfdeploy.export``): issue 5."""

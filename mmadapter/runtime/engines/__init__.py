"""The engines a graph file runs on (ONNX Runtime, OpenVINO, TensorRT), each in its own module."""

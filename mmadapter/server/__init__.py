"""NVIDIA Triton Inference Server for an export: the pipeline model (image bytes in, labels out) that the
server's Python backend runs, the repository that holds it, and ``mmadapter serve``'s launcher."""

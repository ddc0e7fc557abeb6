"""The embedding model: reading the published weights, building the ONNX graph, quantising it, its model card.

Only :mod:`catalens.model.card` is needed at run time (Lambda has no ``onnx`` package); the other modules are
build-time only and import ``onnx`` / ``onnxruntime.quantization``, so this package imports none of them eagerly.
"""

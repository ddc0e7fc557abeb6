"""Building the embedding model: reading the published weights, the ONNX graph, int8 quantisation.

Build-time only (``onnx``, ``onnxruntime.quantization``); what serving needs of a model is its card,
:mod:`catalens.model.card`.
"""

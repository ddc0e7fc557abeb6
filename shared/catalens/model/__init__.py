"""The embedding model as serving sees it: its card (file, checksum, preprocessing, pooling, dimension).

Building the model is a tool (:mod:`catalens_tools.model`); Lambda has no ``onnx`` package.
"""

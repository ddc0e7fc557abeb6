"""catalens — shop by photo.

The core package: AWS-free domain logic (imaging, embedding, index, ranking, profiles) behind
small interfaces, with thin boto3 adapters in :mod:`catalens.adapters`.
"""

__version__ = "0.1.0"

"""SequenceModel: tensors in, tensors out. Knows nothing of pandas, files or HTTP."""
from .config import ConfigError, ModelConfig, NUM_EVENT_FEATURES
from .padding import pad_batch
from .features import time_bucket, encode_time_features, strength_bucket
from .sequence_model import SequenceModel

__all__ = [
    "ConfigError", "ModelConfig", "SequenceModel", "pad_batch", "time_bucket", "encode_time_features",
    "strength_bucket", "NUM_EVENT_FEATURES",
]

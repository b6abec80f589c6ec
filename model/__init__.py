"""SequenceModel: tensors in, tensors out. Knows nothing of pandas, files or HTTP."""
from .config import (ModelConfig, NUM_EVENT_FEATURES, FEATURE_AGE, FEATURE_GAP, FEATURE_EVENT_TYPE, FEATURE_SOURCE,
                     FEATURE_STRENGTH)
from .padding import pad_batch
from .features import time_bucket, encode_time_features, strength_bucket
from .sequence_model import SequenceModel

__all__ = [
    "ModelConfig", "SequenceModel", "pad_batch", "time_bucket", "encode_time_features", "strength_bucket",
    "NUM_EVENT_FEATURES", "FEATURE_AGE", "FEATURE_GAP", "FEATURE_EVENT_TYPE", "FEATURE_SOURCE", "FEATURE_STRENGTH",
]

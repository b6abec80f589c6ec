"""seqrec_sdk: the Python client of the seqrec recommender (TorchServe), for marketplace backends.

    from seqrec_sdk import Client, Experiment, Variant
    client = Client("http://127.0.0.1:8080", token_file="key_file.json")   # or a list of hosts
    recs = client.recommend([12, 7, 3], k=10, user_id="u-42")

Depends on ``requests`` only; never imports torch, numpy or pandas. See README.md.
"""

import logging

from ._hosts import Cooldown
from .client import Client, ExposureCallback, Fallback
from .errors import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    ModelNotFound,
    Overloaded,
    SeqrecError,
    ServerError,
    Timeout,
)
from .experiment_source import ExperimentSet, ExperimentSource, StaticExperiments
from .experiments import Experiment
from .growthbook_source import ExperimentPayloadError, GrowthBookSource
from .models import (
    ClientStats,
    Event,
    Exposure,
    HostStats,
    ModelVersion,
    Outcome,
    Recommendations,
    RecommendRequest,
    ScoredItem,
    Variant,
)
from ._transport import RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "Client",
    "RetryPolicy",
    "Cooldown",
    "Experiment",
    "Variant",
    "ExperimentSet",
    "ExperimentSource",
    "StaticExperiments",
    "GrowthBookSource",
    "ExperimentPayloadError",
    "Event",
    "RecommendRequest",
    "ScoredItem",
    "Recommendations",
    "Exposure",
    "Outcome",
    "ModelVersion",
    "ClientStats",
    "HostStats",
    "Fallback",
    "ExposureCallback",
    "SeqrecError",
    "BadRequest",
    "AuthError",
    "ModelNotFound",
    "Overloaded",
    "ServerError",
    "Timeout",
    "ConnectionFailed",
]

# A library never configures logging; the application decides where records go.
logging.getLogger(__name__).addHandler(logging.NullHandler())

"""What ships: no heavy imports, py.typed, a NullHandler, the public names."""

import logging
import subprocess
import sys
from pathlib import Path

import seqrec_sdk


def test_import_never_pulls_torch_numpy_or_pandas():
    # pyarrow and matplotlib load only inside ParquetWriter and plot_cumulative_lift
    code = ("import sys, seqrec_sdk, seqrec_sdk.analysis, seqrec_sdk.experiments, "
            "seqrec_sdk.testing, seqrec_sdk.growthbook_source, seqrec_sdk.records, "
            "seqrec_sdk.readout, seqrec_sdk.readout_plot, seqrec_sdk.stats; "
            "from seqrec_sdk import Client; print(sorted({'torch', 'numpy', 'pandas', "
            "'pyarrow', 'matplotlib', 'growthbook'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ships_py_typed_and_a_null_handler():
    assert (Path(seqrec_sdk.__file__).parent / "py.typed").is_file()
    handlers = logging.getLogger("seqrec_sdk").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_public_api():
    for name in ("Client", "Experiment", "Variant", "Event", "Recommendations", "ScoredItem",
                 "SeqrecError", "BadRequest", "AuthError", "ModelNotFound", "Overloaded",
                 "Timeout", "ConnectionFailed", "RetryPolicy", "Exposure", "RecommendRequest",
                 "Outcome", "GrowthBookSource", "ExperimentPayloadError", "ExperimentSource"):
        assert name in seqrec_sdk.__all__ and hasattr(seqrec_sdk, name)
    for cls in (seqrec_sdk.BadRequest, seqrec_sdk.AuthError, seqrec_sdk.ModelNotFound,
                seqrec_sdk.Overloaded, seqrec_sdk.Timeout, seqrec_sdk.ConnectionFailed,
                seqrec_sdk.ServerError):
        assert issubclass(cls, seqrec_sdk.SeqrecError)

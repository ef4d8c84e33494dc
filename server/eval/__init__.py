"""`cvgen eval`'s engine: the Composite Video Generation protocol's metrics on result sequences."""

from .api import evaluate
from .results import EvalReport, Metric, SequenceResult

__all__ = ["evaluate", "EvalReport", "Metric", "SequenceResult"]

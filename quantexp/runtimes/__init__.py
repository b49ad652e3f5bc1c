"""What executes a deployed model. Evaluation and timing both go through a
``Runtime``, so the artifact a user would deploy is what gets measured."""

from quantexp.runtimes.base import Runtime, predict
from quantexp.runtimes.torch_runtime import TorchRuntime

__all__ = ["Runtime", "TorchRuntime", "predict"]

"""``symoe serve``: the mixture as one OpenAI-compatible model. :mod:`.protocol` (wire format and
errors), :mod:`.window` (one window of requests through the method, batched by model),
:mod:`.mixture` (the queue and its worker), :mod:`.lanes` (a window's batches on every device at
once), :mod:`.placement` (which model on which device, which stay resident: planned by the core),
:mod:`.residency` (one lane's loaded models),
:mod:`.results` (a serve run as a run directory), :mod:`.http` (the server, streaming included)."""

from .http import MixtureServer
from .mixture import Mixture
from .protocol import Answer, ApiError, Limits, ServeRequest

__all__ = ["Answer", "ApiError", "Limits", "Mixture", "MixtureServer", "ServeRequest"]

"""One engine over a mixed pool for the pipeline's stages (keywords, profiling, aggregator
selection) and ``symoe serve``, which run every model through a single engine: each call goes to
its model's engine (which engine that is: ``symoe.execution.launch``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from ..records import Request
from .engine import BatchInfo, Clock, Engine, ModelSettings, OnDone, OnText


class RoutedEngine(Engine):
    """Calls for a model in ``by_model`` go to that model's engine, the rest to ``default``."""

    def __init__(self, default: Engine, by_model: dict[str, Engine]):
        self.default, self.by_model = default, dict(by_model)
        self.device = default.device
        self.clock: Clock = getattr(default, "clock", Clock())

    def _for(self, model: str) -> Engine:
        return self.by_model.get(model, self.default)

    def prepare(self) -> None:
        """Warm up the default engine (endpoints are checked when their model loads)."""
        self.default.prepare()

    def load(self, model: ModelSettings, what: str, deadline: float, keep_spare: bool = True) -> dict[str, Any]:
        """Load ``model`` on its engine."""
        return self._for(model.name).load(model, what, deadline, keep_spare)

    def generate(self, model: str, requests: Sequence[Request], on_done: OnDone, what: str, deadline: float) -> BatchInfo:
        """Generate on the model's engine."""
        return self._for(model).generate(model, requests, on_done, what, deadline)

    def generate_streaming(self, model: str, requests: Sequence[Request], on_done: OnDone, on_text: OnText,
                           streamed: Collection[str], what: str, deadline: float) -> BatchInfo:
        """Generate, streaming where it can, on the model's engine."""
        return self._for(model).generate_streaming(model, requests, on_done, on_text, streamed, what, deadline)

    def park(self, model: str, what: str, deadline: float) -> None:
        """Park on the model's engine."""
        self._for(model).park(model, what, deadline)

    def wake(self, model: str, what: str, deadline: float) -> None:
        """Wake on the model's engine."""
        self._for(model).wake(model, what, deadline)

    def unload(self, model: str, what: str, deadline: float) -> None:
        """Unload from the model's engine."""
        self._for(model).unload(model, what, deadline)

    def alive(self, model: str) -> bool:
        """Whether the model's engine holds it alive."""
        return self._for(model).alive(model)

    def kill(self, model: str) -> None:
        """Drop the model on its engine."""
        self._for(model).kill(model)

    def close(self) -> None:
        """Close every engine."""
        for e in [self.default, *self.by_model.values()]:
            e.close()


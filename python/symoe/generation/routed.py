"""One engine over a mixed pool for the pipeline's stages (keywords, profiling, aggregator
selection), which run every model through a single engine: endpoint models go to their own
:class:`RemoteEngine`, ``serve = "vllm"`` models to a :class:`ServedEngine`, the rest to the
in-process :class:`LocalEngine`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..records import Request
from .endpoint import EndpointSettings
from .engine import BatchInfo, Clock, Engine, ModelSettings, OnDone
from .local import LocalEngine
from .remote import RemoteEngine
from .served import ServedEngine

if TYPE_CHECKING:
    from ..config.pool import Config


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


def stage_engine(cfg: Config, log_dir: Path, device: int = 0) -> Engine:
    """The engine stages use on ``device``: in-process for plain models, a server per
    ``serve = "vllm"`` model, a remote engine per endpoint model."""
    local: Engine = LocalEngine.for_config(cfg, device, log_dir)
    served = {m.name for m in cfg.models if m.serve == "vllm"}
    if served:
        local = ServedEngine.for_config(cfg, device, log_dir, served, local)
    clock = getattr(local, "clock", None)
    remote: dict[str, Engine] = {m.name: RemoteEngine(device, EndpointSettings.of(m), clock)
                                 for m in cfg.models if m.endpoint}
    return RoutedEngine(local, remote) if remote else local

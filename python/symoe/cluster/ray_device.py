"""A cluster device as the Ray engine holds it: its placement-group reservation, calls waited on in
slices (a closed engine fails at once), and a Ray fault told apart as the actor's own error, a
dead actor on a live node, or a lost node (:class:`DeviceLost`, after which every call fails)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ..generation.engine import Clock, DeviceLost, EngineError, EngineTimeout
from .live import alive_node_ids
from .ray_host import Hosted

if TYPE_CHECKING:
    from ..config.topology import ClusterDevice

log = logging.getLogger("symoe.engine")
POLL_S = 1.0        # waits are sliced so a closed engine fails its blocked call within this
NODE_CHECK_S = 5.0  # a device reservation checks its node is still in the cluster this often
VERDICT_S = 90.0    # after a fault: how long to wait for the cluster to say whether the node is gone


class RayDevice:
    """One cluster device: its placement group, reserved on first use, and whether its node is lost."""

    def __init__(self, device: int, place: ClusterDevice, clock: Clock):
        self.device, self.place, self.clock = device, place, clock
        self.lock = threading.Lock()  # guards pg and closed (and the engine's resident models)
        self.pg: Any = None
        self.closed = False
        self.lost: str | None = None  # the device's node is gone: every later call fails at once

    def where(self, model: str) -> str:
        """How messages name ``model`` on this device."""
        return f"model {model} on {self.place.label()}"

    def placement(self, what: str, deadline: float, model: str = "") -> Any:
        """The device's placement group, reserved on first use; while it waits, a node that leaves
        the cluster is a :class:`DeviceLost` at once (naming ``model``, the one to be loaded)."""
        from ray.util.placement_group import placement_group

        self.check(what, model)
        with self.lock:
            if self.closed:
                raise EngineError(f"{what}: {self.place.label()}: engine closed")
            if self.pg is None:
                self.pg = placement_group([self.place.bundle()], name=f"symoe-device-{self.device}-{os.getpid()}")
            pg = self.pg
        while True:
            try:
                self.wait(pg.ready(), what, min(deadline, self.clock.now() + NODE_CHECK_S))
                return pg
            except EngineTimeout:
                if self.clock.now() >= deadline:
                    raise EngineTimeout(f"{what}: {self.place.label()}: no node offers {self.place.bundle()} by the "
                                        f"deadline (is the node up? `ray status`)") from None
                if self.node_gone():
                    self.lost = f"node {self.place.node} (id {str(self.place.node_id)[:12]}) is not alive"
                    self.check(what, model)

    def node_gone(self, node_id: str | None = None) -> bool:
        """Whether the node (default: the device's) has left the cluster."""
        node_id = node_id or self.place.node_id
        return node_id is not None and node_id not in alive_node_ids()

    def wait(self, ref: Any, what: str, deadline: float) -> bool:
        """Wait for ``ref`` in slices: a closed engine fails at once, a missed deadline is an
        :class:`EngineTimeout`."""
        import ray

        while True:
            left = deadline - self.clock.now()
            if left <= 0:
                raise EngineTimeout(f"{what}: {self.place.label()}: no answer by the deadline")
            ready, _ = ray.wait([ref], timeout=min(POLL_S, left))
            if ready:
                return True
            if self.closed:
                raise EngineError(f"{what}: {self.place.label()}: engine closed")

    # --- faults ----------------------------------------------------------------------------------

    def check(self, what: str, model: str = "") -> None:
        """Fail at once once the device's node is known lost (no reload can succeed there)."""
        if self.lost is not None:
            raise DeviceLost(f"{what}: {self.place.label()}: {self.lost}", model, self.device, self.place.node, True)

    def fault(self, e: BaseException, model: str, what: str, h: Hosted | None) -> EngineError:
        """A Ray error as an engine error: the actor's own exception, or a lost actor or node."""
        import ray

        if isinstance(e, ray.exceptions.RayTaskError) and not isinstance(e, ray.exceptions.RayActorError):
            return EngineError(f"{what}: {self.where(model)}: {str(e.cause if e.cause is not None else e).strip()}")
        node_id = (h.node_id if h else None) or self.place.node_id
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        try:
            node_lost = self.verdict(h, node_id)
        except Exception as q:  # noqa: BLE001  (the cluster itself does not answer)
            return DeviceLost(f"{what}: {self.where(model)}: lost ({cause}), and the cluster does not answer "
                              f"({type(q).__name__}: {q})", model, self.device, self.place.node, True)
        if node_lost:
            self.lost = f"node {self.place.node} (id {str(node_id)[:12]}) was lost"
            msg = f"{what}: node {self.place.node} (id {str(node_id)[:12]}) was lost: {self.where(model)} is gone ({cause})"
        else:
            msg = f"{what}: the actor of {self.where(model)} died (pid {h.pid if h else '?'}; its node is alive): {cause}"
        return DeviceLost(msg, model, self.device, self.place.node, node_lost)

    def verdict(self, h: Hosted | None, node_id: str | None) -> bool:
        """Whether the actor's node is gone. Ray first reports a lost node's actors as merely
        unavailable; the cluster declares the node dead after its health checks fail, so this
        waits (bounded) for either verdict: the node gone, or the actor dead on a live node."""
        import ray

        end = time.monotonic() + VERDICT_S
        while True:
            if self.node_gone(node_id):
                return True
            if h is None or time.monotonic() > end:
                return False
            try:
                ray.get(h.actor.ping.remote(), timeout=POLL_S)
                return False  # it answers: the actor and its node are fine, the call alone failed
            except ray.exceptions.ActorDiedError:
                time.sleep(POLL_S)  # dead for good: its node's death, if that was the cause, is known by now
                return self.node_gone(node_id)
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                time.sleep(POLL_S)

    def release(self) -> None:
        """Give the placement group back (the engine is closed)."""
        with self.lock:
            pg, self.pg = self.pg, None
        if pg is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(pg)
            except Exception as e:  # noqa: BLE001  (reported: the reservation may outlive the run)
                log.warning("%s: placement group %s was not removed (%s: %s)%s", self.place.label(),
                            getattr(pg, "id", pg), type(e).__name__, e,
                            f"; {self.lost}" if self.lost else "; it may still hold the device: `ray list placement-groups`")

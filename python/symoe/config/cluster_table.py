"""The pool file's ``[cluster]`` table: where plans run when they leave one machine::

    [cluster]
    backend = "ray"
    address = "10.0.0.1:6379"      # the head node (``ray start --head``); "auto": RAY_ADDRESS
    discover = true                # devices from the running cluster (GPUs per node, or for CPU
                                   # testing one custom resource per device: symoe_dev_0, ...)
    host_memory_gb = 512           # per discovered node: host memory for parked models

    [[cluster.node]]               # or list the nodes (their ``ray start --node-name``)
    name = "gpu-a"
    devices = 8                    # GPUs (GPU platform) ...
    # resources = ["symoe_dev_0"]  # ... or one custom resource per device (CPU platform)
    memory_gb = 80                 # per device (default: [devices] memory_gb)
    host_memory_gb = 512           # the node's host memory for parked models, shared by its devices

Devices are numbered node by node in the order the nodes are listed (discovered: by node name);
that numbering is the plan's device numbering (:mod:`.topology`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


class NodeTable(BaseModel):
    """One ``[[cluster.node]]`` table: a node's devices and its host memory budget."""

    model_config = _STRICT
    name: str = Field(min_length=1)               # as ``ray start --node-name`` (Ray's default: the node's IP)
    devices: PositiveInt | None = None            # GPU platform: GPUs on the node
    resources: list[str] | None = None            # CPU platform: one custom resource per device
    memory_gb: PositiveFloat | None = None        # per device (None: [devices] memory_gb)
    host_memory_gb: NonNegativeFloat = 0.0        # parked models, shared by the node's devices

    @model_validator(mode="after")
    def _one_kind(self) -> NodeTable:
        if (self.devices is None) == (self.resources is None):
            raise ValueError(f"node {self.name!r}: give either devices (GPUs) or resources (CPU devices)")
        if self.resources is not None and (not self.resources or len(set(self.resources)) != len(self.resources)):
            raise ValueError(f"node {self.name!r}: resources must be distinct names, at least one")
        return self


class ClusterTable(BaseModel):
    """``[cluster]``: run on a Ray cluster instead of this machine's devices."""

    model_config = _STRICT
    backend: Literal["ray"] = "ray"
    address: str = "auto"
    discover: bool = False
    resource_prefix: str = Field(default="symoe_dev_", min_length=1)  # CPU devices offered as <prefix><n>
    host_memory_gb: NonNegativeFloat = 0.0                    # per discovered node
    node: list[NodeTable] = []

    @model_validator(mode="after")
    def _nodes(self) -> ClusterTable:
        if not self.discover and not self.node:
            raise ValueError("list the nodes ([[cluster.node]] tables) or set discover = true")
        names = [n.name for n in self.node]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique, got {names}")
        return self

    def toml_lines(self) -> list[str]:
        """The table as TOML (``Config.to_toml``), read back by the pool file parser."""
        def val(v: Any) -> str:
            return json.dumps(v) if not isinstance(v, float) else repr(v)

        lines = ["", "[cluster]"] + [f"{k} = {val(v)}" for k, v in self.model_dump(exclude={"node"}).items()]
        for n in self.node:
            lines += ["", "[[cluster.node]]"] + [f"{k} = {val(v)}" for k, v in n.model_dump(exclude_none=True).items()]
        return lines

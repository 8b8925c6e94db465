"""``symoe serve``: the mixture as one OpenAI-compatible model (see :mod:`symoe.serve`)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import click

from .. import _core
from ..config.pool import Config
from ..execution.launch import Launch, serve_engines
from ..execution.on_cluster import serve_on_cluster
from ..generation import Engine
from ..generation.fake import ScaledClock
from ..method.datasets import bundled
from ..method.routing import Profiles
from ..serve.placement import ServePlanning
from .common import config_opt, fail, store_opt


def close(engines: Sequence[Engine]) -> None:
    """Close every engine (the workers, servers or actors their loads started)."""
    for e in engines:
        e.close()


@click.command("serve")
@config_opt
@click.option("--profiles", "profiles_path", default=None, help="Profiles JSON (default: the bundled tiny-pool profiles).")
@click.option("--task", "task_path", default=None, help="Task config JSON (default: the bundled one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option("--window-ms", type=click.FloatRange(min=0), default=100.0, show_default=True,
              help="Requests arriving within this window are batched by model; 0: one request at a time.")
@click.option("-k", type=click.IntRange(1, _core.MAX_K), default=3, show_default=True, help="Experts per request.")
@click.option("--skip-agreed", is_flag=True, help="No aggregation where the k extracted answers agree.")
@click.option("--api-key-env", default=None, help="Name of a variable holding the key clients must send.")
@store_opt
@click.option("--max-tokens", type=click.IntRange(min=1), default=None,
              help="Largest max_tokens a request may ask (default: the config's [engine] max_tokens, else 4096).")
@click.option("--max-body-kb", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most requests in one window.")
@click.option("--drain-s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On SIGTERM: time to finish requests in flight.")
@click.option("--run-dir", default=None, type=click.Path(file_okay=False),
              help="On stopping, write results.jsonl and summary.json here (requests that gave a gold answer), "
                   "for `symoe report`.")
@click.option("--replan-every", type=click.IntRange(min=0), default=ServePlanning().replan_every, show_default=True,
              help="Windows between two placement plans (which model on which device, which stay resident); 0: once.")
@click.option("--fake", "fake_scale", type=click.FloatRange(min=0), default=None,
              help="Fake engine (tests, load tests): the cost model's times scaled by this (0: instant).")
def serve_cmd(config_path: str, profiles_path: str | None, task_path: str | None, host: str, port: int,
              window_ms: float, k: int, skip_agreed: bool, api_key_env: str | None, store_path: str,
              max_tokens: int | None, max_body_kb: int, max_batch: int, drain_s: float, run_dir: str | None,
              replan_every: int, fake_scale: float | None) -> None:
    """Serve the mixture as one OpenAI-compatible model, symoe-<task name>."""
    from ..pipeline import Task
    from ..serve import Limits, Mixture, MixtureServer
    from ..store import Store

    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise click.UsageError(f"--api-key-env {api_key_env}: that variable is not set or empty")
    try:
        cfg = Config.load(config_path)
        profiles = Profiles.from_json(profiles_path or bundled("tiny_profiles.json"))
        task = Task.from_json(task_path or bundled("tiny_task.json"))
        launch = Launch(fake=None if fake_scale is None else ScaledClock(fake_scale))
        if cfg.cluster is not None and launch.fake is None:  # the cluster's devices, one Ray engine each
            cfg, launch = serve_on_cluster(cfg)
        engines = serve_engines(cfg, Path(store_path).parent / "serve-logs", launch)
        store = Store(store_path)
    except (ValueError, RuntimeError, OSError) as e:
        fail(e)
    try:
        mixture = Mixture(cfg, profiles, task.keyword_model, task.aggregator, engines.devices, store, k=k,
                          window_s=window_ms / 1000, skip_agreed=skip_agreed, max_batch=max_batch,
                          embeddings=Path(store_path).parent / "embeddings.npz",  # as symoe run keeps them
                          endpoints=engines.endpoints, planning=ServePlanning(replan_every=replan_every))
        limits = Limits(max_body_kb * 1024, max_tokens or cfg.engine.max_tokens or 4096)
        # The address first: a port in use is found before any model loads.
        server = MixtureServer(mixture, f"symoe-{task.name}", host, port, limits, key)
        loaded = mixture.start()
    except (ValueError, RuntimeError, OSError) as e:
        close(engines.all())  # workers or servers a load started
        store.close()
        fail(e)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.serve_in_thread()
    click.echo(f"serving symoe-{task.name} at {server.url} (window {window_ms:g} ms, k={k}; resident: "
               f"{', '.join(loaded) or 'none'}; {mixture.setup.lanes.describe()})", err=True)
    while not stop.wait(0.5):
        pass
    click.echo("stopping: no new requests; finishing those in flight", err=True)
    failed = server.close(drain_s)
    close(engines.all())
    store.close()
    if run_dir is not None:
        click.echo(f"{mixture.results.write(run_dir)} graded answers written to {run_dir}", err=True)
    lanes = mixture.setup.lanes
    click.echo(f"stopped after {mixture.windows} windows ({len(mixture.calls)} engine batches; {lanes.loads} loads, "
               f"{lanes.replans} re-plans, {lanes.swaps} changed the placement); "
               f"{failed} queued requests failed for lack of time", err=True)

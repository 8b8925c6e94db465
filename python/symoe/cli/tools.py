"""``symoe models`` and ``symoe bench``: obtaining pools and measuring this machine."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config.pool import Config
from .common import fail, table


@click.group("models")
def models_grp() -> None:
    """Obtain model pools."""


@models_grp.command("fetch")
@click.argument("pool", type=click.Choice(["tiny"]))
@click.option("--only", multiple=True, help="Fetch only these models of the pool.")
def models_fetch(pool: str, only: tuple[str, ...]) -> None:
    """Fetch, verify (SHA-256) and convert the tiny CPU pool into the cache; print its config path."""
    from ..models.fetch import fetch_tiny

    try:
        path = fetch_tiny(list(only) or None)
    except (ValueError, RuntimeError) as e:
        fail(e)
    click.echo(str(path))


@click.group("bench")
def bench_grp() -> None:
    """Measurements on this machine."""


@bench_grp.command("load")
@click.option("--config", "config_path", default="tiny", show_default=True)
@click.option("--model", "models", multiple=True, help="Models to measure (default: all in the config).")
@click.option("--batch", "batches", multiple=True, type=int, default=(1, 4, 16), show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--out", "out_path", default=None, help="Write the measurements as JSON.")
def bench_load_cmd(config_path: str, models: tuple[str, ...], batches: tuple[int, ...], max_tokens: int,
                   out_path: str | None) -> None:
    """Per model: load, first token, throughput by batch size, unload; raw file-read bandwidth."""
    from ..generation.loadbench import bench_model
    from ..models.fetch import check_models, provide

    try:
        cfg = Config.load(config_path)
        provide(cfg, models or cfg.names)
        check_models(cfg, models or cfg.names)
        rows = [bench_model(cfg, m, tuple(batches), max_tokens) for m in (models or cfg.names)]
    except (ValueError, RuntimeError) as e:
        fail(e)
    out = []
    for r in rows:
        tput = "  ".join(f"b{b['batch']}:{b['tokens_per_s']:.0f}" for b in r["batches"])
        ft = r["batches"][0]["first_token_s"] if r["batches"] else None
        fr = r.get("file_read", {})
        out.append([r["model"], r["load_s"], ft or 0.0, tput, r["unload_s"], fr.get("gbps", float("nan")),
                    r.get("h2d_gbps") or float("nan")])
    table(out, ["model", "load s", "first token s", "tokens/s by batch", "unload s", "file read GB/s", "H2D GB/s"])
    if out_path:
        Path(out_path).write_text(json.dumps(rows, indent=1))

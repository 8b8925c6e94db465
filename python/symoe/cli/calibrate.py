"""``symoe calibrate``: measure this machine's cost figures for a pool's models into the machine
profile (``--show`` prints it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..config import profile
from ..config.pool import Config
from ..method.datasets import bundled, load_questions
from ..method.embedding_speed import measure as measure_embedding
from ..method.routing import Profiles
from ..pipeline import Task
from ..progress import progress_bar
from .common import config_opt, fail, table

EMBED_TEXTS = 128  # keywords timed for the matching stage's figure (~10 s on 2 cores)


def _show(cfg: Config) -> None:
    p = profile.load(cfg.engine.platform)
    path = profile.profile_path(p.key)
    click.echo(f"machine profile {path}" + ("" if path.exists() else " (not written yet: run `symoe calibrate`)"))
    click.echo(json.dumps(p.machine))
    rows = []
    for key, mp in sorted(p.models.items()):
        lens = {r: len([x for ls in mp.lengths.get(r, {}).values() for x in ls]) for r in profile.ROLES}
        curve = "; ".join(f"{k} cores: " * k.isdigit() + " ".join(f"{x:.0f}" for x in c) for k, c in mp.curves.items())
        prefill = "; ".join(f"{k}: {x:.0f}" for k, x in mp.prefills.items()) or mp.prefill_tps
        rows.append([key, mp.worker_start_s, mp.load_s, mp.start_s, mp.read_gbps, mp.init_s, prefill, curve,
                     f"{lens['expert']} / {lens['aggregate']}"])
    if rows:
        table(rows, ["model", "worker start s", "load s", "start s", "read GB/s", "init s", "prefill tok/s",
                     "decode tok/s at 1, 2, 4, ...",
                     "lengths (expert / aggregate)"])
    _, note = profile.apply(cfg, profile=p)
    click.echo(note)


@click.command("calibrate")
@config_opt
@click.option("--show", is_flag=True, help="Print the machine profile and what it gives the pool; measure nothing.")
@click.option("--questions", "n_questions", type=click.IntRange(min=1), default=4, show_default=True,
              help="Validation questions whose answers give each model's output lengths.")
@click.option("--model", "only", multiple=True, help="Measure only this model (repeatable; default: all local ones).")
@click.option("--devices", type=click.IntRange(min=1), default=None, help="Measure one engine as a pool of this many "
              "devices runs it (CPU: its share of the cores; curves are kept per share). Default: the pool's.")
@click.option("--task", "task_path", default=None, help="Task config JSON whose aggregator's aggregate lengths are "
              "measured (default: the bundled one).")
@click.option("--log-dir", default="runs/calibrate", show_default=True, help="Engine worker logs.")
def calibrate_cmd(config_path: str, show: bool, n_questions: int, only: tuple[str, ...], devices: int | None,
                  task_path: str | None, log_dir: str) -> None:
    """Measure this machine's cost figures (load phases, decode tokens/s at 1-16 sequences in
    flight, output lengths on validation questions) for the pool's models with the real engine,
    into the machine profile that `symoe run`, `symoe plan` and the API then use."""
    try:
        cfg = Config.load(config_path).with_devices(devices)
        if show:
            _show(cfg)
            return
        from ..execution.measure import PREFILL_PROMPTS, measure_together  # vLLM's engine: only when measuring

        names = list(only) or [m.name for m in cfg.models if m.endpoint is None and m.serve is None]
        for n in names:
            cfg.model(n)
        # The first n_questions give the lengths; PREFILL_PROMPTS distinct ones time the prefill.
        many = load_questions("mmlu_pro", split="validation", limit=max(n_questions, PREFILL_PROMPTS))
        qs = many[:n_questions]
        task = Task.from_json(task_path or bundled("tiny_task.json"))
        p = profile.load(cfg.engine.platform)
        bar = progress_bar(True, len(names), "calibrate")
        t_all = time.perf_counter()
        for name in names:
            t0 = time.perf_counter()
            lines: list[str] = []
            mp = measure_together(cfg, name, qs, name == task.aggregator, Path(log_dir), lines.append,
                               keywords=name == task.keyword_model, prefill=many[:PREFILL_PROMPTS])
            key = profile.model_key(cfg.model(name))
            p.models[key] = profile.recalibrated(p.models.get(key), mp)  # what runs observed stays
            path = profile.save(p)
            bar(1)
            click.echo(f"{name}: {time.perf_counter() - t0:.0f} s; " + "; ".join(lines))
        bar(None)
        click.echo(f"wrote {path} ({time.perf_counter() - t_all:.0f} s)")
        # The matching stage's figure: the embedder on keywords of the profile vocabulary (as a run embeds them).
        vocabulary = Profiles.from_json(bundled("tiny_profiles.json")).vocabulary[:EMBED_TEXTS]
        speed = measure_embedding(vocabulary)
        if speed is not None:
            click.echo(f"embedder: {speed.seconds_per_text * 1000:.1f} ms per keyword on {speed.threads} threads, "
                       f"load {speed.load_s:.1f} s ({speed.source})")
        click.echo(profile.apply(cfg, profile=p)[1])
    except (ValueError, RuntimeError) as e:
        fail(e)

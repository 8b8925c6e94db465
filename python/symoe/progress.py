"""One progress style for every stage: a thread-safe rich progress bar, or nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(enabled: bool, total: int, label: str = "generations") -> Callable[[int | None], None]:
    """``update(n)`` advances by ``n`` finished items; ``update(None)`` closes the bar."""
    if not enabled:
        return lambda n: None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), transient=False)
    task = bar.add_task(label, total=total)
    bar.start()
    lock = threading.Lock()

    def update(n: int | None) -> None:
        with lock:
            if n is None:
                bar.stop()
            else:
                bar.advance(task, n)
    return update

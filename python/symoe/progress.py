"""A thread-safe progress bar (tqdm when installed), or nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable


def progress_bar(enabled: bool, total: int, label: str = "generations") -> Callable[[int | None], None]:
    if not enabled:
        return lambda n: None
    try:
        from tqdm import tqdm
    except ImportError:
        return lambda n: None
    bar = tqdm(total=total, desc=label, unit="gen", leave=True)
    lock = threading.Lock()

    def update(n: int | None) -> None:
        with lock:
            if n is None:
                bar.close()
            else:
                bar.update(n)
    return update


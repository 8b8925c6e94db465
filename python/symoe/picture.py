"""Timeline pictures: one lane per device (I/O above, generation below), steps coloured by model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def draw_timeline(path: str | Path, names: Sequence[str], device: np.ndarray, model: np.ndarray, kind: Sequence[str],
                  start: np.ndarray, end: np.ndarray, title: str) -> None:
    """Write a PNG. ``kind`` per step: load, run, unload, park, wake or pause."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    D = int(device.max()) + 1 if len(device) else 1
    used = sorted({int(m) for m in model if m >= 0})
    cmap = plt.get_cmap("tab20")
    colour = {m: cmap(i % 20) for i, m in enumerate(used)}
    fig, ax = plt.subplots(figsize=(12, 1.1 + 0.9 * D))
    for s in range(len(start)):
        if end[s] <= start[s]:
            continue
        d, k = int(device[s]), kind[s]
        y = 2 * (D - 1 - d) + (0 if k in ("run", "pause") else 1)
        face = "lightgrey" if k == "pause" else colour.get(int(model[s]), "grey")
        hatch = {"load": "///", "wake": "...", "unload": "xx", "park": "\\\\"}.get(k)
        ax.broken_barh([(start[s], end[s] - start[s])], (y + 0.1, 0.8), facecolors=face, edgecolor="black",
                       linewidth=0.3, hatch=hatch)
    ax.set_yticks([2 * (D - 1 - d) + o + 0.5 for d in range(D) for o in (0, 1)])
    ax.set_yticklabels([f"dev {d} {lane}" for d in range(D) for lane in ("generate", "load/unload")])
    ax.set_xlabel("seconds")
    ax.set_title(title)
    handles = [Patch(facecolor=colour[m], label=names[m].split("/")[-1]) for m in used]
    handles += [Patch(facecolor="white", edgecolor="black", hatch="///", label="load"),
                Patch(facecolor="white", edgecolor="black", hatch="...", label="wake")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

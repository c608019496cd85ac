"""Figures as PNG bytes: drawn by workers without a display and saved next to checkpoints."""

from __future__ import annotations

import io


def subplots(*args, **kwargs):
    """`matplotlib.pyplot.subplots` on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def to_png(fig) -> bytes:
    """The figure, laid out, as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()

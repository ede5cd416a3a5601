"""plots/loss.png: train and validation loss against step."""

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from .atomic import atomic_path  # noqa: E402


def plot_loss(train: list[tuple[int, float]], val: list[tuple[int, float]], path, title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for points, label, style in ((train, "train", "-"), (val, "validation", "o-")):
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, style, label=label, markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)

"""Pictures of a trained autoencoder (`train-ae --plot`): the loss curves, and
inputs beside their reconstructions. matplotlib is imported only here."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from clusterimg.errors import ClusterimgError


def plot_training(folder: Path, model, x: np.ndarray, n: int = 16) -> list[Path]:
    """Write ``loss_curves.png`` and ``reconstructions.png`` into ``folder``;
    ``x`` are the training images (as given to train). Returns the files."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ClusterimgError("--plot needs matplotlib: pip install 'clusterimg[plot]'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    epochs = [h["epoch"] for h in model.history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [h["loss"] for h in model.history], marker="o", ms=3, label="training loss")
    if any(h["val_loss"] is not None for h in model.history):
        ax.plot(epochs, [h["val_loss"] for h in model.history], marker="o", ms=3, label="validation loss (10 % held out)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{model.options.loss} loss")
    ax.set_yscale("log")
    ax.set_title(f"autoencoder, {model.options.loss} loss, latent {model.options.latent}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(folder / "loss_curves.png")
    fig.savefig(written[-1])
    plt.close(fig)

    pick = np.linspace(0, len(x) - 1, min(n, len(x))).round().astype(int)
    inputs = np.asarray(x)[pick]
    recon = model.reconstruct(inputs)
    cols = 8
    rows = -(-len(pick) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(cols * 1.2, rows * 2.5), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k in range(len(pick)):
        r, c = divmod(k, cols)
        for row, im in ((2 * r, inputs[k]), (2 * r + 1, recon[k])):
            im = np.clip(im, 0, 1)
            axes[row, c].imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=1)
        if c == 0:
            axes[2 * r, c].set_title("input", fontsize=8, loc="left")
            axes[2 * r + 1, c].set_title("reconstruction", fontsize=8, loc="left")
    fig.tight_layout()
    written.append(folder / "reconstructions.png")
    fig.savefig(written[-1])
    plt.close(fig)
    return written

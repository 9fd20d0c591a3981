"""Train the demo churn models: the same preprocessing, two network sizes, two qualities."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from models.tabular import SPEC_FILE, WEIGHTS_FILE, FeatureSpec, build_net

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    """One demo model version: its size and how long it trains."""

    label: str
    hidden: list[int]
    epochs: int
    lr: float = 3e-3
    batch_size: int = 512
    seed: int = 0


# The champion is deliberately small; the challenger is big enough to learn the interactions.
CHAMPION = TrainSpec("small-mlp", hidden=[4], epochs=2)
CHALLENGER = TrainSpec("large-mlp", hidden=[128, 64], epochs=8)


def train(
    table: pa.Table,
    *,
    label: str,
    numeric: list[str],
    categorical: list[str],
    spec: TrainSpec,
    folder: Path | None = None,
) -> tuple[Path, dict[str, float]]:
    """Fit one model on an Arrow table.

    Returns:
        ``folder`` (a new temporary folder if none is given; the caller removes it) holding
        ``spec.json`` and ``weights.pt``, the pyfunc artifact, and the training metrics (log loss
        and accuracy on a 10% holdout).
    """
    import torch

    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    features = FeatureSpec.fit(table, numeric=numeric, categorical=categorical, hidden=spec.hidden)
    x = torch.from_numpy(features.transform(table))
    y = torch.from_numpy(table.column(label).to_numpy().astype(np.float32))
    order = torch.from_numpy(rng.permutation(len(y)))
    cut = int(len(y) * 0.9)
    train_idx, hold_idx = order[:cut], order[cut:]

    net = build_net(features)
    optimizer = torch.optim.Adam(net.parameters(), lr=spec.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for epoch in range(spec.epochs):
        net.train()
        for batch in train_idx[torch.randperm(len(train_idx))].split(spec.batch_size):
            optimizer.zero_grad()
            loss = loss_fn(net(x[batch]).squeeze(1), y[batch])
            loss.backward()
            optimizer.step()
        log.debug("%s epoch %d loss %.4f", spec.label, epoch, loss.item())
    net.eval()
    with torch.inference_mode():
        logits = net(x[hold_idx]).squeeze(1)
        metrics = {
            "holdout_log_loss": float(loss_fn(logits, y[hold_idx])),
            "holdout_accuracy": float(((logits > 0).float() == y[hold_idx]).float().mean()),
        }
    folder = folder or Path(tempfile.mkdtemp(prefix=f"lakecast-{spec.label}-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(features.to_json())
    torch.save(net.state_dict(), folder / WEIGHTS_FILE)
    log.info("trained %s: %s", spec.label, metrics)
    return folder, metrics

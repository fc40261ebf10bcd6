"""Train the Fashion-MNIST feature classifier and write its weights and recipe.

    python -m lightning_gen.metrics.train_classifier [--epochs 8] [--seed 0]

Recipe: SmallImageClassifier, Adam (lr 1e-3, cosine decay to 0), batch 128, random horizontal flips
and 2-pixel shifts, on the full official train split; accuracy measured on the official test split.
Writes ``weights/fmnist_classifier.pt`` (state dict) and ``weights/fmnist_classifier.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lightning_gen.data import FashionMNISTDataModule
from lightning_gen.metrics.classifier import SmallImageClassifier

WEIGHTS_DIR = Path(__file__).parent / "weights"


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=generator) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    shifts = torch.randint(-2, 3, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=shifts, dims=(-2, -1))


@torch.no_grad()
def accuracy(model: SmallImageClassifier, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    data = FashionMNISTDataModule(data_dir=args.data_dir, batch_size=128, val_fraction=0.01)
    data.setup("fit")
    data.setup("test")
    train_set = torch.utils.data.ConcatDataset([data.train_set, data.val_set])  # all 60k official train images
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True, generator=generator)
    model = SmallImageClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(train_loader))
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        for x, y in tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}"):
            loss = F.cross_entropy(model(augment(x, generator)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        print(f"epoch {epoch + 1}: test accuracy {accuracy(model, data.test_dataloader()):.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "fmnist_classifier.pt"
    torch.save(model.state_dict(), weights)
    record = {
        "network": "lightning_gen.metrics.classifier.SmallImageClassifier",
        "feature_layer": "body (128-d, after ReLU)",
        "recipe": __doc__.split("Recipe: ")[1].split("\nWrites")[0].replace("\n", " "),
        "epochs": args.epochs,
        "seed": args.seed,
        "torch": torch.__version__,
        "train_seconds": round(time.time() - start),
        "test_accuracy": accuracy(model, data.test_dataloader()),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    (args.out / "fmnist_classifier.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

"""Train the example user model the way a user would have, outside robustcompress, and save a
plain state dict: ``my_resnet18.pt`` (then ``robustcompress run
configs/foreign-resnet18-cifar10-cpu.yaml`` uses it as the base model).

Plain PyTorch: SGD + cosine, random crops and flips, inputs normalised by the user's own
mean/std *outside* the model (as torchvision recipes do); the config declares that
normalisation (``model.input``) so robustcompress attacks in [0, 1] pixel units. Only the data
loading borrows robustcompress's reader of the CIFAR-10 JPEG copy.

    python examples/foreign_model/train_my_resnet.py --epochs 6 --width 16
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from my_resnet import resnet18  # noqa: E402

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crops and horizontal flips."""
    pad = F.pad(x, (4, 4, 4, 4), mode="reflect")
    i, j = torch.randint(0, 9, (2,), generator=g).tolist()
    x = pad[:, :, i:i + 32, j:j + 32]
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--out", default=str(Path(__file__).parent / "my_resnet18.pt"))
    args = ap.parse_args()
    from robustcompress.data import load_dataset

    data = load_dataset("cifar10")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = resnet18(num_classes=10, width=args.width)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = args.epochs * (len(data.train.x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=steps)
    for epoch in range(args.epochs):
        t0, model = time.time(), model.train()
        perm = torch.randperm(len(data.train.x), generator=g)
        for k in range(len(perm) // 128):
            idx = perm[k * 128:(k + 1) * 128]
            x = (augment(data.train.x[idx], g) - MEAN) / STD
            loss = F.cross_entropy(model(x), data.train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = sum(int((model((data.test.x[i:i + 500] - MEAN) / STD).argmax(1)
                           == data.test.y[i:i + 500]).sum()) for i in range(0, 10000, 500)) / 10000
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, test accuracy {acc:.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

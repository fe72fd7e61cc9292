"""The strong model's recipe in PyTorch, for a same-machine comparison with
`rusty-recognition train --model mnist-cnn` (BENCHMARKS.md).

    python3 scripts/torch_mnist_cnn.py [--data data/mnist] [--epochs 20] [--seed 0] [--compile]

Same architecture (scripts/load_in_pytorch.py: MnistCnn), He init, Nesterov SGD
0.1 / 0.9 / 5e-4, one-cycle (25% up, cosine), batch 128, and the same digit
augmentation (±10° rotation, ±10% scale and shift, bilinear, background fill)
done on the GPU with affine_grid / grid_sample. Data lives on the GPU; per-epoch
time is measured after a synchronize. Prints one line per epoch.
"""
import argparse, math, os, sys, time
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load_in_pytorch import MnistCnn, idx  # the same network as the checkpoint loader builds


def he_init(model):
    # Our recipe's --init he: Kaiming normal weights, zero biases (BatchNorm keeps 1 and 0).
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def augment(x, fill):
    # x: (N, 1, 28, 28) normalized. Inverse maps in normalized coordinates (align_corners=True
    # puts pixel centres on the grid as ours does).
    n = x.shape[0]
    u = lambda: torch.rand(n, device=x.device) * 2 - 1
    angle, scale = u() * math.radians(10), 1 + u() * 0.1
    tx, ty = u() * 0.1 * 28, u() * 0.1 * 28
    c, s = torch.cos(angle), torch.sin(angle)
    # in = R(-a) (out - t) / scale, in pixels about the centre; normalized units: 2 / 27 per pixel.
    k = 2.0 / 27.0
    theta = torch.stack([torch.stack([c / scale, s / scale, -(c * tx + s * ty) / scale * k], 1),
                         torch.stack([-s / scale, c / scale, (s * tx - c * ty) / scale * k], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=True)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=True) + fill


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/mnist")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    dev = torch.device("cuda")
    mean, std = 0.1307, 0.3081
    load = lambda name: torch.tensor(idx(f"{a.data}/{name}").astype(np.float32) / 255.0, device=dev)
    xtr = ((load("train-images-idx3-ubyte.gz") - mean) / std).unsqueeze(1)
    ytr = torch.tensor(idx(f"{a.data}/train-labels-idx1-ubyte.gz").astype(np.int64), device=dev)
    xte = ((load("t10k-images-idx3-ubyte.gz") - mean) / std).unsqueeze(1)
    yte = torch.tensor(idx(f"{a.data}/t10k-labels-idx1-ubyte.gz").astype(np.int64), device=dev)
    model = he_init(MnistCnn(32, 0.2)).to(dev)
    step_model = torch.compile(model) if a.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    bs = 128
    steps = math.ceil(len(xtr) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=a.epochs * steps, pct_start=0.25,
                                                anneal_strategy="cos", div_factor=25, final_div_factor=1e4)
    fill = -mean / std
    total = 0.0
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name()} (cudnn.allow_tf32={torch.backends.cudnn.allow_tf32})")
    for epoch in range(a.epochs):
        model.train()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xtr), device=dev)
        for i in range(steps):
            j = perm[i * bs:(i + 1) * bs]
            x = augment(xtr[j], fill)
            loss = F.cross_entropy(step_model(x), ytr[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        total += dt
        model.eval()
        with torch.no_grad():
            correct = sum((model(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum().item() for i in range(0, len(xte), 1000))
        print(f"torch epoch {epoch + 1:2d}/{a.epochs}  test_acc {100 * correct / len(xte):6.2f}%  {dt:6.3f}s  (training time so far {total:7.2f}s)")


if __name__ == "__main__":
    main()

"""Load a rusty-recognition ResNet checkpoint into PyTorch (strict) and evaluate it on CIFAR.

    python3 scripts/load_resnet_in_pytorch.py CHECKPOINT CIFAR_DIR [--torch-cifar ../shared/bench/torch_cifar.py]

resnet18 checkpoints load into the `ResNet18` class of torch_cifar.py (torchvision's layout
with the CIFAR stem); resnet20/resnet56 (`cifar-resnet`) into the same blocks with He et al.'s
three stages. Normalization comes from the checkpoint's stored dataset description. Prints the
test accuracy PyTorch measures next to the one our training recorded.
"""
import argparse, gzip, importlib.util, json, os
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F


def load_torch_cifar(path):
    spec = importlib.util.spec_from_file_location("torch_cifar", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cifar_resnet(mod, depth, classes):
    """He et al.'s CIFAR ResNet-(6n+2) from torch_cifar.py's Block, torchvision names."""
    n = (depth - 2) // 6

    class CifarResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False); self.bn1 = nn.BatchNorm2d(16)
            cin, stages = 16, []
            for cout, s in [(16, 1), (32, 2), (64, 2)]:
                stages.append(nn.Sequential(*[mod.Block(cin if b == 0 else cout, cout, s if b == 0 else 1) for b in range(n)]))
                cin = cout
            self.layer1, self.layer2, self.layer3 = stages
            self.fc = nn.Linear(64, classes)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return CifarResNet()


def read_test(d, classes):
    name, rec, label_at = ("test_batch.bin", 3073, 0) if classes == 10 else ("test.bin", 3074, 1)
    p = os.path.join(d, name)
    raw = gzip.open(p + ".gz").read() if os.path.exists(p + ".gz") else open(p, "rb").read()
    a = np.frombuffer(raw, np.uint8).reshape(-1, rec)
    return a[:, rec - 3072:].reshape(-1, 3, 32, 32), a[:, label_at].astype(np.int64)


def main():
    from safetensors import safe_open
    from safetensors.torch import load_file

    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("data")
    ap.add_argument("--torch-cifar", default=os.path.join(os.path.dirname(__file__), "../../shared/bench/torch_cifar.py"))
    a = ap.parse_args()
    with safe_open(a.checkpoint, "pt") as f:
        meta = f.metadata()
    config, info = json.loads(meta["model"]), json.loads(meta["dataset"])
    mod = load_torch_cifar(a.torch_cifar)
    if config["arch"] == "resnet18":
        model = mod.ResNet18(info["classes"])
    elif config["arch"] == "cifar-resnet":
        model = cifar_resnet(mod, config["depth"], info["classes"])
    else:
        raise SystemExit(f"this script builds resnet18 and the CIFAR resnets, not {config['arch']}")
    model.load_state_dict(load_file(a.checkpoint), strict=True)  # every name and shape must match
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    # Plain fp32 like ours (PyTorch lets cuDNN use TF32 for convolutions by default).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = model.to(dev).eval()
    x, y = read_test(a.data, info["classes"])
    mean = torch.tensor(info["mean"], device=dev).view(1, 3, 1, 1); std = torch.tensor(info["std"], device=dev).view(1, 3, 1, 1)
    x = (torch.tensor(x, device=dev).float() / 255 - mean) / std
    y = torch.tensor(y, device=dev)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), 1000):
            correct += (model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item()
    print(f"PyTorch {torch.__version__} ({dev}), strict load of {config['arch']}: test accuracy {100 * correct / len(y):.2f}% "
          f"({correct}/{len(y)}); the checkpoint says {100 * float(meta.get('test_accuracy', 'nan')):.2f}%")


if __name__ == "__main__":
    main()

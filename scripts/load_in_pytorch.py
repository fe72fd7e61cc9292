"""Load a rusty-recognition checkpoint (LeNet-5 or mnist-cnn) into PyTorch and evaluate it.

    python3 scripts/load_in_pytorch.py runs/<run>/model.safetensors [data/mnist]

Proves the checkpoint is a plain PyTorch state_dict: same names, shapes and layouts.
"""
import gzip, json, sys
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class MnistCnn(nn.Module):
    """rusty-recognition's strong model: conv-BN-ReLU blocks, global average pool, dropout, Linear."""

    def __init__(self, width=32, dropout=0.0):
        super().__init__()
        chans = [(1, width), (width, width), (width, 2 * width), (2 * width, 2 * width), (2 * width, 4 * width)]
        for i, (cin, cout) in enumerate(chans, 1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1))
            setattr(self, f"bn{i}", nn.BatchNorm2d(cout))
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * width, 10)

    def forward(self, x):
        for i in range(1, 6):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i in (2, 4):
                x = F.max_pool2d(x, 2)
        return self.fc(self.drop(x.mean((2, 3))))


def idx(path):
    with gzip.open(path, "rb") as f:
        b = f.read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def main():
    # Imported here: torch_mnist_cnn.py imports this file for the network alone.
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = sys.argv[1]
    data = sys.argv[2] if len(sys.argv) > 2 else "data/mnist"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    print("metadata:", meta)
    config = json.loads(meta["model"])
    if config["arch"] == "lenet5":
        model = LeNet5()
    elif config["arch"] == "mnist-cnn":
        model = MnistCnn(config.get("width", 32), config.get("dropout", 0.0))
    else:
        sys.exit(f"this script builds lenet5 and mnist-cnn, not {config['arch']}")
    model.load_state_dict(load_file(path))  # strict: every name and shape must match
    model.eval()
    x = torch.tensor(idx(f"{data}/t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0)
    x = ((x - 0.1307) / 0.3081).unsqueeze(1)
    y = torch.tensor(idx(f"{data}/t10k-labels-idx1-ubyte.gz").astype(np.int64))
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).sum().item()
    print(f"PyTorch {torch.__version__}: test accuracy {100 * correct / len(y):.2f}% ({correct}/{len(y)}); checkpoint metadata says {100 * float(meta.get('test_accuracy', 'nan')):.2f}%")


if __name__ == "__main__":
    main()

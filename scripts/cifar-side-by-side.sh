#!/usr/bin/env bash
# CIFAR-10 side by side on one GPU, in one call: ours, ../shared/bench/torch_cifar.py and airbench94
# (github.com/KellerJordan/cifar10-airbench, MIT; not part of this project: pass its checkout).
#
#   scripts/cifar-side-by-side.sh AIRBENCH_DIR [RUNS]
#
# Env: DATA (the CIFAR-10 binary batches; default /tmp/stage/cifar10), BIN (our binary; default
# .device-bin/rusty-recognition), TORCH_CIFAR (default .device-bin/torch_cifar.py), OURS (our train
# options for a ResNet run beside torch_cifar.py; default the ResNet-18 recipe at bf16; OURS=skip: none),
# TORCH_EPOCHS (default 20; 0: skip torch_cifar.py), SPEEDRUN (our speedrun options; skip: none),
# WORK (default /tmp/side).
# airbench reads cifar10/{train,test}.pt from its working folder: they are made here from DATA.
# Prints one SIDE line per run and a summary: mean accuracy and mean training seconds as each counts them.
set -uo pipefail
cd "$(dirname "$0")/.."
AIRBENCH=${1:?usage: $0 AIRBENCH_DIR [RUNS]}
AIRBENCH=$(cd "$AIRBENCH" && pwd)
RUNS=${2:-5}
DATA=${DATA:-/tmp/stage/cifar10}
BIN=${BIN:-.device-bin/rusty-recognition}
TORCH_CIFAR=${TORCH_CIFAR:-.device-bin/torch_cifar.py}
OURS=${OURS:---model resnet18 --precision bf16}
WORK=${WORK:-/tmp/side}
mkdir -p "$WORK/cifar10"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

python3 - "$DATA" "$WORK/cifar10" <<'EOF'
import gzip, os, sys
import numpy as np, torch
src, dst = sys.argv[1], sys.argv[2]
def read(name):
    p = os.path.join(src, name)
    raw = gzip.open(p + ".gz").read() if os.path.exists(p + ".gz") else open(p, "rb").read()
    a = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
    return a[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), a[:, 0].astype(np.int64)
classes = open(os.path.join(src, "batches.meta.txt")).read().split()
for split, names in [("train", [f"data_batch_{i}.bin" for i in range(1, 6)]), ("test", ["test_batch.bin"])]:
    parts = [read(n) for n in names]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    torch.save({"images": images, "labels": labels, "classes": classes}, os.path.join(dst, f"{split}.pt"))
print("made", dst, "train.pt and test.pt")
EOF

airbench() {  # $1: script inside AIRBENCH; runs it RUNS times (its own loop, shortened), prints SIDE lines
  (cd "$WORK" && python3 - "$AIRBENCH/$1" "$RUNS" <<'EOF'
import re, sys, io, contextlib
path, runs = sys.argv[1], int(sys.argv[2])
src = open(path).read()
src = re.sub(r"for run in range\(\d+\)", f"for run in range({runs})", src)
sys.argv = [path]
sys.path.insert(0, __import__("os").path.dirname(path))
buf = io.StringIO()
class Tee(io.TextIOBase):
    def write(self, s):
        buf.write(s); sys.__stdout__.write(s); return len(s)
with contextlib.redirect_stdout(Tee()):
    exec(compile(src, path, "exec"), {"__name__": "__main__", "__file__": path})
# Its table: a header naming the columns, then rows; the run number is printed on a run's first row
# only, and the "eval" row ends a run. The warm-up run (compilation) is left out.
header, run = None, None
for line in buf.getvalue().splitlines():
    if not line.startswith("|"):
        continue
    cols = [c.strip() for c in line.strip().strip("|").split("|")]
    if "epoch" in cols:
        header = cols
        continue
    if header is None or len(cols) != len(header):
        continue
    row = dict(zip(header, cols))
    run = row["run"] or run
    if row["epoch"] == "eval" and run != "warmup":
        seconds = row.get("time_seconds") or row.get("total_time_seconds")
        print(f"SIDE airbench {path.split('/')[-1]} run {run} tta_acc {row['tta_val_acc']} seconds {seconds}")
EOF
  )
}

echo "== airbench94 with Muon (torch.compile max-autotune; compilation left out by its own timer)"
airbench airbench94_muon.py 2>&1 | grep -E "SIDE|Mean|Error|error" | tail -$((RUNS + 3))
echo "== airbench94, uncompiled (legacy/airbench94.py)"
airbench legacy/airbench94.py 2>&1 | grep -E "SIDE|Mean|Error|error" | tail -$((RUNS + 3))

# Time to 94%: the training seconds summed over epochs until the first test accuracy >= 94% (per-epoch
# evaluations left out, as airbench leaves them out).
to94() {  # stdin: lines "accuracy seconds"
  python3 -c '
import sys
total, reached = 0.0, None
for line in sys.stdin:
    acc, sec = map(float, line.split())
    total += sec
    if reached is None and acc >= 0.94:
        reached = total
print(f"time_to_94 {reached:.2f}" if reached is not None else f"time_to_94 not reached in {total:.2f} s")'
}

echo "== ours: speedrun ${SPEEDRUN:-} (cifar-speed, timed as airbench times itself)"
if [ "${SPEEDRUN:-}" != skip ]; then
  # shellcheck disable=SC2086
  "$BIN" speedrun --device cuda --data-dir "$DATA" --runs "$RUNS" ${SPEEDRUN:-} 2>&1 | tee "$WORK/speedrun.log" | grep -vE "^SPEEDRUN" | tail -3
  sed -nE 's/^SPEEDRUN run=([0-9]+) seed=[0-9]+ tta_acc=([0-9.]+) .*time_s=([0-9.]+).*/SIDE ours cifar-speed run \1 tta_acc \2 seconds \3/p' "$WORK/speedrun.log"
  grep -E "^SPEEDRUN_SUMMARY" "$WORK/speedrun.log"
fi

if [ "${TORCH_EPOCHS:-20}" != 0 ]; then
  echo "== ../shared/bench/torch_cifar.py (ResNet-18, bf16 autocast, channels-last)"
  python3 "$TORCH_CIFAR" --data "$DATA" --epochs "${TORCH_EPOCHS:-20}" >"$WORK/torch.log" 2>&1
  tail -2 "$WORK/torch.log"
  echo "SIDE torch_cifar $(sed -nE 's/^torch epoch.*test_acc +([0-9.]+)% +([0-9.]+)s.*/\1 \2/p' "$WORK/torch.log" | awk '{print $1/100, $2}' | to94)"
fi

[ "$OURS" = skip ] && exit 0
echo "== ours: $OURS"
for seed in $(seq 0 $((RUNS - 1))); do
  out="$WORK/ours-$seed"
  rm -rf "$out"
  # shellcheck disable=SC2086
  "$BIN" train --device cuda --dataset cifar10 --data-dir "$DATA" --seed "$seed" --out "$out" $OURS >"$out.log" 2>&1
  python3 - "$out.log" "$seed" <<'EOF'
import re, sys
log, seed = open(sys.argv[1]).read(), sys.argv[2]
epochs = re.findall(r"^epoch\s+\d+/\d+ .*test_acc\s+([\d.]+)%\s+([\d.]+)s", log, re.M)
peak = re.search(r"^(peak .*)$", log, re.M)
if not epochs:
    print("SIDE ours seed", seed, "failed:", log.strip().splitlines()[-1:])
else:
    seconds, to94 = 0.0, None
    for acc, sec in epochs:
        seconds += float(sec)
        if to94 is None and float(acc) >= 94.0:
            to94 = seconds
    reached = f"time_to_94 {to94:.2f}" if to94 is not None else "time_to_94 not reached"
    print(f"SIDE ours seed {seed} test_acc {float(epochs[-1][0]) / 100:.4f} seconds {seconds:.2f} (training steps only) {reached} | {peak.group(1) if peak else ''}")
EOF
done

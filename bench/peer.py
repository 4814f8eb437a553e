#!/usr/bin/python3
"""PyTorch peer of bench/patchwise_bench.cpp: the same jobs, timed the same way.

    /usr/bin/python3 bench/peer.py --job JOB [--seconds S] [--threads N] [--data DIR] [--warmup W]
                                   [--profile STEPS]

JOB: seed_train, seed_infer, whole_train, whole_infer, vgg_train, vgg_infer, resnet_train,
resnet_infer (ResNet-20), resnet_train_bf16, resnet_infer_bf16, predict_latency,
resnet56_train, resnet56_infer, resnet18_train, resnet18_infer, bagnet11_train, bagnet11_infer,
mil_train, mil_infer (gated-attention MIL on 4 bags of random 32x32 tiles; bag sizes as
patchwise_bench draws them, or PATCHWISE_BAG_SIZES="n1,n2,..." cycled over the bags).
Prints one JSON line on stdout; everything else goes to stderr. Bad arguments: exit 2.
--profile STEPS: after the timing, PyTorch's profiler table of the operators over STEPS
more steps, on stderr: the peer's side of build/bench/step_breakdown's table.
Needs Debian's python3-torch (torch 1.13, the same libtorch patchwise links against).
"""
import argparse
import gzip
import json
import os
import sys
import time

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:
    print(f"peer.py: {e}; install python3-torch and run with /usr/bin/python3", file=sys.stderr)
    sys.exit(2)
# resnet.cpp's backbones as torchvision writes them, shared with the export's Python side.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from patchwise_torch import ResNet  # noqa: E402

JOBS = ("seed_train", "seed_infer", "whole_train", "whole_infer", "vgg_train", "vgg_infer",
        "resnet_train", "resnet_infer", "resnet_train_bf16", "resnet_infer_bf16",
        "predict_latency", "mil_train", "mil_infer", "resnet56_train", "resnet56_infer",
        "resnet18_train", "resnet18_infer", "bagnet11_train", "bagnet11_infer")
# Jobs named after a residual backbone other than resnet20 ("resnet_" jobs run resnet20).
RESIDUAL = ("resnet56", "resnet18", "bagnet11")
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
BENCH_IMAGES = 12800  # kBenchImages
TRAIN_BATCH = 64      # kTrainBatch
INFER_BATCH = 256     # kInferBatch
INPUT = 32            # PatchGridOptions::input
MIL_BAGS = 4           # kMilBags
MIL_TILES = (300, 420)  # kMilMinTiles, kMilMaxTiles: default bag sizes, uniform
MIL_HIDDEN = 128        # ModelConfig::attention_hidden
MASK64 = (1 << 64) - 1
VGG16_PLAN = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0]


def read_idx(path, magic, header):
    """IDX file (gzip'd or plain) -> uint8 numpy array of its payload, as src/data/idx.cpp."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: wrong magic number {found}, expected {magic}")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range((header - 4) // 4)]
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def split_file(data_dir, name):
    for candidate in (name, name + ".gz"):  # find_split_file: plain first, then .gz
        if os.path.exists(os.path.join(data_dir, candidate)):
            return os.path.join(data_dir, candidate)
    raise ValueError(f"{data_dir}: no {name} or {name}.gz in this directory")


def load_data(data_dir, explicit):
    """First 12,800 training images uint8 [N,1,28,28] and int64 labels (bench_data())."""
    if not os.path.isdir(data_dir):
        if explicit:
            raise ValueError(f"--data: {data_dir}: no such directory")
        # The C++ bench falls back to random images of Fashion-MNIST's shape.
        print(f"peer.py: {data_dir} missing, using random images", file=sys.stderr)
        torch.manual_seed(0)
        return (torch.randint(0, 256, (BENCH_IMAGES, 1, 28, 28), dtype=torch.uint8),
                torch.randint(0, 10, (BENCH_IMAGES,), dtype=torch.int64))
    images = read_idx(split_file(data_dir, "train-images-idx3-ubyte"), 2051, 16)
    labels = read_idx(split_file(data_dir, "train-labels-idx1-ubyte"), 2049, 8)
    images = torch.from_numpy(images[:BENCH_IMAGES].copy()).unsqueeze(1).contiguous()
    labels = torch.from_numpy(labels[:BENCH_IMAGES].astype(np.int64))
    return images, labels


def normalization(images):
    """compute_normalization: float64 mean and population std per channel of x/255."""
    x = images.to(torch.float64).div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), unbiased=False)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


class SmallCnn(nn.Module):
    """backbone.cpp SmallCnnImpl: 3x [conv3x3 valid, (BatchNorm), ReLU(inplace), maxpool 2],
    fc1 64 + ReLU (the features), dropout, fc2 K (the classifier)."""

    def __init__(self, in_channels, side, classes=10, dropout=0.5, batch_norm=False):
        super().__init__()
        layers = []
        for out in (16, 32, 64):
            layers.append(nn.Conv2d(in_channels, out, 3))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_channels, side = out, (side - 2) // 2
        self.conv = nn.Sequential(*layers)
        self.fc1 = nn.Linear(in_channels * side * side, 64)
        self.dropout = nn.Dropout(dropout)  # BackboneOptions::dropout defaults to 0.5
        self.fc2 = nn.Linear(64, classes)

    def features(self, x):
        return torch.relu(self.fc1(self.conv(x).flatten(1)))  # not in place, as features()

    def classify(self, features):
        return self.fc2(self.dropout(features))

    def forward(self, x):
        return self.classify(self.features(x))


class Vgg16(nn.Module):
    """backbone.cpp Vgg16Impl: VGG16 convs (padding 1), global max pool, one Linear(512, K)."""

    def __init__(self, in_channels, classes=10):
        super().__init__()
        layers = []
        for out in VGG16_PLAN:
            if out == 0:
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(in_channels, out, 3, padding=1), nn.ReLU(inplace=True)]
            in_channels = out
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels, classes)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(2).max(2)[0])  # global max pooling


def residual(name):
    """A residual backbone as scripts/patchwise_torch.py builds it for `patchwise export`:
    resnet20, resnet56, resnet18 or bagnet11, one input channel, 10 classes."""
    return ResNet({"name": name, "in_channels": 1, "num_classes": 10})


class PatchClassifier(nn.Module):
    """patch_classifier.cpp with grid.cpp's cut and fusion.cpp's 'mean' rule."""

    def __init__(self, backbone, mean, std, boxes, patch, bf16=False):
        super().__init__()
        self.backbone = backbone
        self.bf16 = bf16  # set_precision(kBFloat16): autocast around the backbone
        self.boxes, self.patch = boxes, patch  # [(y, x)], side of the square patch
        self.register_buffer("mean", mean.to(torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", std.to(torch.float32).view(1, -1, 1, 1))

    def cut(self, x):
        # grid.cpp: narrow views per box, one stack [B,P,C,h,w], one bilinear resize of all.
        p = self.patch
        stacked = torch.stack([x.narrow(2, y, p).narrow(3, c, p) for y, c in self.boxes], 1)
        b, n, ch = stacked.shape[:3]
        flat = F.interpolate(stacked.view(b * n, ch, p, p), size=(INPUT, INPUT), mode="bilinear",
                             align_corners=False)
        return flat.view(b, n, ch, INPUT, INPUT)

    def forward(self, images):
        x = images.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)  # normalize()
        patches = self.cut(x)
        b, n = patches.shape[:2]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.backbone(patches.flatten(0, 1))  # [B*P,C,I,I]: one forward, shared
        logits = logits.float()
        patch_logits = logits.view(b, n, logits.size(1))
        # fuse(kMean): log of the mean of the patches' softmax probabilities.
        log_probs = torch.logsumexp(torch.log_softmax(patch_logits, 2), 1) - np.log(n)
        return patch_logits, log_probs


class GatedAttentionMil(nn.Module):
    """A tiled PatchClassifier with gated-attention fusion (attention.cpp, Ilse et al. 2018):
    one backbone pass over every bag's tiles, then per bag a = softmax(w(tanh(V h) *
    sigmoid(U h))), z = sum a h, and the backbone's own classifier on z."""

    def __init__(self, mean, std, hidden=MIL_HIDDEN):
        super().__init__()
        self.backbone = SmallCnn(1, INPUT, dropout=0.0, batch_norm=True)
        self.V = nn.Linear(64, hidden)
        self.U = nn.Linear(64, hidden)
        self.w = nn.Linear(hidden, 1, bias=False)  # AttentionPool's w has no bias
        self.register_buffer("mean", mean.to(torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", std.to(torch.float32).view(1, -1, 1, 1))

    def forward(self, tiles, sizes):
        x = tiles.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        features = self.backbone.features(x)  # [N,64]
        bag_logits = []
        for h in torch.split(features, sizes):
            scores = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(1)
            a = torch.softmax(scores, 0)
            bag_logits.append(self.backbone.classify(a @ h))
        return torch.stack(bag_logits)


def mil_loss(bag_logits, labels):
    """compute_loss(kFused): the cross-entropy of the bags' fused outputs."""
    return F.cross_entropy(bag_logits, labels)


def splitmix64(state):
    """-> (new state, draw); patchwise_bench.cpp's splitmix64."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def mil_bag_sizes():
    """mil_bag_sizes(): PATCHWISE_BAG_SIZES cycled over the bags, else splitmix64 from seed 1."""
    env = os.environ.get("PATCHWISE_BAG_SIZES", "")
    given = [item.strip() for item in env.split(",")] if env else []
    if not all(item.isdigit() and int(item) >= 1 for item in given):
        raise ValueError(f"PATCHWISE_BAG_SIZES: '{env}', expected positive integers separated "
                         "by commas")
    given = [int(item) for item in given]
    sizes, state = [], 1
    low, high = MIL_TILES
    for i in range(MIL_BAGS):
        state, draw = splitmix64(state)
        sizes.append(given[i % len(given)] if given else low + draw % (high - low + 1))
    return sizes


def mil_batch():
    """mil_batch(): uint8 tiles [N,1,32,32] of the bags one after the other, and labels."""
    sizes = mil_bag_sizes()
    torch.manual_seed(1)
    tiles = torch.randint(0, 256, (sum(sizes), 1, INPUT, INPUT), dtype=torch.uint8)
    return tiles, sizes, torch.randint(0, 10, (MIL_BAGS,), dtype=torch.int64)


def describe_mil(job, model, tiles, sizes, labels):
    """As patchwise_bench: bags, parameters and the step-0 loss, on stderr."""
    with torch.no_grad():
        loss = mil_loss(model(tiles, sizes), labels).item()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{job}: {len(sizes)} bags, {len(tiles)} tiles, {parameters} parameters, "
          f"loss at step 0 {loss:.4f}", file=sys.stderr)


def mil_fn(job, tiles, sizes, labels):
    """mil_train: forward, the fused loss, backward, Adam(1e-3); mil_infer: eval, inference mode."""
    torch.manual_seed(0)
    model = GatedAttentionMil(*normalization(tiles))
    training = job == "mil_train"
    model.train(training)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3) if training else None
    describe_mil(job, model, tiles, sizes, labels)

    def train_step():
        loss = mil_loss(model(tiles, sizes), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def infer_step():
        with torch.inference_mode():
            return model(tiles, sizes)
    return (train_step if training else infer_step), MIL_BAGS


def build_model(job, images):
    torch.manual_seed(0)
    mean, std = normalization(images)
    if job.startswith("whole"):
        boxes, patch = [(0, 0)], 28  # 1x1 grid of 28: offset (28 - 28) / 2
    else:
        boxes, patch = [(y, x) for y in (0, 10) for x in (0, 10)], 18  # 2x2 of 18, stride 10
    if job.startswith("vgg"):
        backbone = Vgg16(1)
    elif job.split("_")[0] in RESIDUAL:
        backbone = residual(job.split("_")[0])
    elif job.startswith("resnet"):
        backbone = residual("resnet20")
    else:
        backbone = SmallCnn(1, INPUT)
    return PatchClassifier(backbone, mean, std, boxes, patch, bf16=job.endswith("_bf16"))


def train_step_fn(model, images, labels):
    """BM_TrainStep: shuffled batches of 64, patch loss, Adam(1e-3)."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)  # Loader seed 1 (C++: mt19937_64 shuffle)
    state = {"order": torch.randperm(len(images), generator=generator), "next": 0}

    def step():
        if state["next"] >= len(images):  # new epoch, new order
            state["order"], state["next"] = torch.randperm(len(images), generator=generator), 0
        index = state["order"][state["next"]:state["next"] + TRAIN_BATCH]
        state["next"] += TRAIN_BATCH
        batch, batch_labels = images[index], labels[index]
        patch_logits, _ = model(batch)
        n = patch_logits.size(1)
        # compute_loss(kPatch): per-patch cross-entropy against labels repeated per patch.
        loss = F.cross_entropy(patch_logits.flatten(0, 1), batch_labels.repeat_interleave(n))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step, TRAIN_BATCH


def infer_fn(model, images, batch):
    """BM_Inference: eval, inference mode, consecutive slices wrapping at the end."""
    model.eval()
    state = {"offset": 0}

    def step():
        if state["offset"] + batch > len(images):
            state["offset"] = 0
        with torch.inference_mode():
            _, log_probs = model(images.narrow(0, state["offset"], batch))
        state["offset"] += batch
        return log_probs
    return step, batch


def measure(step, warmup, seconds):
    for _ in range(warmup):
        step()
    iterations, start = 0, time.perf_counter()
    while True:
        step()
        iterations += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and iterations >= 3:
            return iterations, elapsed


def profile(step, steps):
    """The operators' inclusive times over `steps` steps, as step_breakdown prints them."""
    with torch.autograd.profiler.profile() as prof:
        for _ in range(steps):
            step()
    rows = sorted(prof.key_averages(), key=lambda e: e.cpu_time_total, reverse=True)
    print(f"operators over {steps} steps (inclusive time, top 25):", file=sys.stderr)
    for e in rows[:25]:
        print(f"  {e.key:<52} {e.cpu_time_total / 1000:10.2f} ms {e.count:6d} calls",
              file=sys.stderr)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        print(f"peer.py: {message}", file=sys.stderr)
        sys.exit(2)


def main():
    parser = Parser(description="PyTorch peer of patchwise_bench")
    parser.add_argument("--job", required=True, choices=JOBS)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS")
    args = parser.parse_args()
    if not args.seconds > 0:
        parser.error(f"--seconds: {args.seconds}, expected a positive number")
    if args.threads < 1:
        parser.error(f"--threads: {args.threads}, expected at least 1")
    if args.warmup < 0:
        parser.error(f"--warmup: {args.warmup}, expected 0 or more")
    if args.profile < 0:
        parser.error(f"--profile: {args.profile}, expected 0 or more steps")
    mil = args.job.startswith("mil")
    try:
        if mil:
            tiles, sizes, labels = mil_batch()
        else:
            images, labels = load_data(args.data or DEFAULT_DATA, args.data is not None)
    except (OSError, ValueError) as e:
        parser.error(str(e))

    torch.set_num_threads(args.threads)  # set_threads()
    if mil:
        step, batch = mil_fn(args.job, tiles, sizes, labels)
    elif "_train" in args.job:
        step, batch = train_step_fn(build_model(args.job, images), images, labels)
    else:  # predict_latency: the seed model, one image per call
        model = build_model(args.job, images)
        step, batch = infer_fn(model, images, 1 if args.job == "predict_latency" else INFER_BATCH)
    print(f"peer.py: {args.job}, batch {batch}, {args.threads} threads", file=sys.stderr)
    iterations, seconds = measure(step, args.warmup, args.seconds)
    result = {"job": args.job, "images_per_s": round(iterations * batch / seconds, 2),
              "iterations": iterations, "seconds": round(seconds, 4), "batch": batch,
              "latency_ms": round(1000.0 * seconds / iterations, 4), "threads": args.threads}
    if mil:
        result["tiles_per_s"] = round(iterations * len(tiles) / seconds, 2)
    print(json.dumps(result))
    if args.profile:
        profile(step, args.profile)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A patchwise model in PyTorch, from the two files `patchwise export` writes.

    import patchwise_torch
    model = patchwise_torch.load("model.pt")          # reads model.json beside it
    log_probs, patch_logits = model(images)           # uint8 [B,C,H,W], as patchwise takes them

The modules below mirror patchwise's own (src/models, src/fusion, src/patch) with the same
parameter names, so `load_state_dict` takes the exported weights unchanged, and the
outputs equal patchwise's up to rounding. Grid models only: a tiled model's state dict
loads the same way (`PatchClassifier.backbone`, `.attention`), but cutting tiles is left
to the caller.

Run as a script it checks an export against outputs saved by patchwise's test:
    patchwise_torch.py MODEL.pt EXPECTED.pt   (exit 0 when every output agrees within 1e-5)
or, the other way round, makes weights for patchwise to import (torch_import_test):
    patchwise_torch.py --make CONFIG.json WEIGHTS.pt OUTPUTS.pt [STYLE]
builds the model of an exported configuration with random weights and batch-norm
statistics, torch.save's its state dict to WEIGHTS.pt and the outputs on random images to
OUTPUTS.pt ("images", "log_probs", "patch_logits"). STYLE names the tensors: "model" (the
default: PatchClassifier's names), "backbone" (the backbone's alone, as torchvision's
ResNet), "torchvision" (vgg16 as torchvision's VGG: "features.<i>" and a "classifier" of
its own), "checkpoint" ({"epoch", "state_dict", "optimizer"}).
"""
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_stack(in_channels, plan, padding, batch_norm):
    """patchwise's add_conv sequence: conv3x3 -> [bn] -> [2x2 max pool] -> ReLU; 0 in
    `plan` puts a pool after the conv before it."""
    layers = []
    for i, out in enumerate(plan):
        if out == 0:
            continue
        layers.append(nn.Conv2d(in_channels, out, 3, padding=padding))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        if i + 1 < len(plan) and plan[i + 1] == 0:
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.ReLU())
        in_channels = out
    return nn.Sequential(*layers), in_channels


class SmallCnn(nn.Module):
    def __init__(self, o):
        super().__init__()
        self.conv, width = conv_stack(o["in_channels"], [16, 0, 32, 0, 64, 0], 0, o["batch_norm"])
        side = o["input"]
        for _ in range(3):
            side = (side - 2) // 2
        self.fc1 = nn.Linear(width * side * side, 64)
        self.dropout = nn.Dropout(o["dropout"])
        self.fc2 = nn.Linear(64, o["num_classes"])
        self.feature_dim = 64

    def features(self, x):
        return F.relu(self.fc1(self.conv(x).flatten(1)))

    def classify(self, f):
        return self.fc2(self.dropout(f))


VGG16 = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0]


class Vgg16(nn.Module):
    def __init__(self, o):
        super().__init__()
        self.conv, width = conv_stack(o["in_channels"], VGG16, 1, o["batch_norm"])
        self.fc = nn.Linear(width, o["num_classes"])
        self.feature_dim = width

    def features(self, x):
        return self.conv(x).flatten(2).max(2).values  # global max pooling

    def classify(self, f):
        return self.fc(f)


class BasicBlock(nn.Module):
    def __init__(self, i, o, stride, k1=3, k2=3):
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, k1, stride, k1 // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, k2, 1, k2 // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.downsample = None
        if stride != 1 or i != o:
            project = nn.Conv2d(i, o, 1, stride, bias=False)
            self.downsample = nn.Sequential(project, nn.BatchNorm2d(o))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)), inplace=True)))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)), inplace=True)


class ResNet(nn.Module):
    # stem, widths, blocks per stage, local (BagNet: 3x3 only first in each stage)
    PLANS = {"resnet20": (16, [16, 32, 64], 3, False), "resnet56": (16, [16, 32, 64], 9, False),
             "resnet18": (64, [64, 128, 256, 512], 2, False),
             "bagnet11": (32, [32, 64, 128], 2, True)}

    def __init__(self, o):
        super().__init__()
        stem, widths, blocks, local = self.PLANS[o["name"]]

        def kernel(b, conv):
            return 3 if not local or (b == 0 and conv == 0) else 1
        self.conv1 = nn.Conv2d(o["in_channels"], stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        width = stem
        for s, w in enumerate(widths):
            stage = [BasicBlock(width if b == 0 else w, w, 2 if s > 0 and b == 0 else 1,
                                kernel(b, 0), kernel(b, 1))
                     for b in range(blocks)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*stage))
            width = w
        self.stages = len(widths)
        self.fc = nn.Linear(width, o["num_classes"])
        self.feature_dim = width

    def features(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        for s in range(self.stages):
            y = getattr(self, f"layer{s + 1}")(y)
        return y.mean((2, 3))

    def classify(self, f):
        return self.fc(f)

    def forward(self, x):
        return self.classify(self.features(x))


BACKBONES = {"small-cnn": SmallCnn, "vgg16": Vgg16, "resnet20": ResNet, "resnet56": ResNet,
             "resnet18": ResNet, "bagnet11": ResNet}


class AttentionPool(nn.Module):
    """Attention MIL pooling (Ilse et al. 2018), patchwise's parameter names."""

    def __init__(self, features, hidden, gated, positions):
        super().__init__()
        self.V = nn.Parameter(torch.empty(hidden, features))
        self.V_bias = nn.Parameter(torch.empty(hidden))
        if gated:
            self.U = nn.Parameter(torch.empty(hidden, features))
            self.U_bias = nn.Parameter(torch.empty(hidden))
        self.gated = gated
        self.w = nn.Parameter(torch.empty(hidden))
        if positions > 0:
            self.position = nn.Parameter(torch.zeros(positions, features))

    def weights(self, features):
        h = features + self.position.unsqueeze(0) if hasattr(self, "position") else features
        hidden = torch.tanh(F.linear(h, self.V, self.V_bias))
        if self.gated:
            hidden = hidden * torch.sigmoid(F.linear(h, self.U, self.U_bias))
        return torch.softmax(hidden @ self.w, dim=1)


def fuse(rule, patch_logits):
    """patchwise's fixed rules (src/fusion/, a file each): [B,P,K] logits -> [B,K] log-probs."""
    log_p = torch.log_softmax(patch_logits, dim=2)
    patches = log_p.shape[1]
    if rule == "mean":
        return torch.logsumexp(log_p, dim=1) - math.log(patches)
    if rule == "gmean":
        return torch.log_softmax(log_p.mean(1), dim=1)
    if rule == "max":
        return torch.log_softmax(log_p.max(1).values, dim=1)
    if rule == "vote":
        counts = F.one_hot(log_p.argmax(2), log_p.shape[2]).to(log_p.dtype).sum(1)
        return ((counts + log_p.exp().mean(1)) / (patches + 1)).log()
    if rule == "iqm":
        quarter = patches // 4  # dropped at each end of each class's ranked probabilities
        kept = log_p.sort(dim=1).values[:, quarter : patches - quarter]
        return torch.log_softmax(torch.logsumexp(kept, dim=1), dim=1)
    raise ValueError(f"unknown fusion rule {rule!r}")


class PatchClassifier(nn.Module):
    def __init__(self, config):
        super().__init__()
        b = dict(config["backbone"])
        b["num_classes"] = len(config["classes"])
        b["in_channels"] = config["image"]["channels"]
        b["input"] = config["grid"]["input"]
        self.input = b["input"]
        self.fusion = config["fusion"]
        self.patches = config.get("patches", [])
        self.backbone = BACKBONES[b["name"]](b)
        if self.fusion in ("attention", "gated-attention"):
            a = config["attention"]
            positions = len(self.patches) if a["position_embedding"] else 0
            self.attention = AttentionPool(self.backbone.feature_dim, a["hidden"],
                                           self.fusion == "gated-attention", positions)
        if self.fusion == "concat":
            width = len(self.patches) * self.backbone.feature_dim
            self.concat = nn.Linear(width, b["num_classes"])
        channels = b["in_channels"]
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def cut(self, x):
        """[B,C,H,W] -> [B*P,C,I,I]: patchwise's PatchGrid::cut."""
        patches = []
        for p in self.patches:
            patch = x[:, :, p["y"]:p["y"] + p["h"], p["x"]:p["x"] + p["w"]]
            patches.append(patch.flip(3) if p["flip"] else patch)
        stacked = torch.stack(patches, 1)
        flat = stacked.flatten(0, 1)
        if flat.shape[2] != self.input or flat.shape[3] != self.input:
            flat = F.interpolate(flat, size=(self.input, self.input), mode="bilinear",
                                 align_corners=False)
        return flat

    def forward(self, images):
        x = images
        if x.dtype == torch.uint8:
            x = x.float().div(255.0).sub(self.mean).div(self.std)
        shape = (x.shape[0], len(self.patches), -1)
        features = self.backbone.features(self.cut(x)).view(shape)
        patch_logits = self.backbone.classify(features.flatten(0, 1)).view(shape)
        if self.fusion in ("attention", "gated-attention"):
            weights = self.attention.weights(features)
            pooled = (features * weights.unsqueeze(2)).sum(1)
            return torch.log_softmax(self.backbone.classify(pooled), dim=1), patch_logits
        if self.fusion == "concat":
            return torch.log_softmax(self.concat(features.flatten(1)), dim=1), patch_logits
        return fuse(self.fusion, patch_logits), patch_logits


def load(path, config_path=None):
    """The model `patchwise export` wrote to `path` (and its JSON, by default beside it),
    in evaluation mode."""
    path = Path(path)
    config_path = Path(config_path) if config_path else path.with_suffix(".json")
    config = json.loads(config_path.read_text())
    if config.get("format") != "patchwise-torch-export":
        raise ValueError(f"{config_path}: not a patchwise export (format {config.get('format')!r})")
    model = PatchClassifier(config)
    model.load_state_dict(torch.load(path))  # strict: every name and shape must match
    return model.eval()


def randomized(config):
    """The model of `config` in evaluation mode with random weights and batch-norm
    statistics, normalized as the configuration says."""
    model = PatchClassifier(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 / math.sqrt(max(p[0].numel(), 1))
                                           if p.dim() > 1 else 0.1))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.add_(1.0)
                module.running_mean.copy_(torch.randn_like(module.running_mean) * 0.1)
                module.running_var.copy_(torch.rand_like(module.running_var) + 0.5)
                module.num_batches_tracked.fill_(7)
        channels = config["image"]["channels"]
        norm = config["normalization"]
        model.mean.copy_(torch.tensor(norm["mean"]).view(1, channels, 1, 1))
        model.std.copy_(torch.tensor(norm["std"]).view(1, channels, 1, 1))
    return model.eval()


def torchvision_vgg(backbone):
    """Vgg16's weights under torchvision's names: features.<i> counts conv, [bn], ReLU and
    [pool] in torchvision's order; the classifier is three layers of its own."""
    state, index, pool = {}, 0, False
    for layer in backbone.conv:
        if isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
            for key, value in layer.state_dict().items():
                state[f"features.{index}.{key}"] = value
            index += 1
        elif isinstance(layer, nn.MaxPool2d):
            pool = True
        else:  # the ReLU, then the pool
            index += 2 if pool else 1
            pool = False
    for i, (o, n) in enumerate(((16, 512), (16, 16), (1000, 16))):
        state[f"classifier.{3 * i}.weight"] = torch.randn(o, n)
        state[f"classifier.{3 * i}.bias"] = torch.randn(o)
    return state


def state_in_style(model, style):
    if style == "model":
        return model.state_dict()
    if style == "backbone":
        return model.backbone.state_dict()
    if style == "torchvision":
        return torchvision_vgg(model.backbone)
    if style == "checkpoint":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        return {"epoch": 3, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}
    raise ValueError(f"unknown style {style!r}")


def make(config_path, weights_path, outputs_path, style="model"):
    config = json.loads(Path(config_path).read_text())
    torch.manual_seed(0)
    model = randomized(config)
    image = config["image"]
    images = torch.randint(0, 256, (3, image["channels"], image["height"], image["width"]),
                           dtype=torch.uint8)
    with torch.no_grad():
        log_probs, patch_logits = model(images)
    torch.save(state_in_style(model, style), weights_path)
    torch.save({"images": images, "log_probs": log_probs, "patch_logits": patch_logits},
               outputs_path)
    return 0


def main(argv):
    if len(argv) in (5, 6) and argv[1] == "--make":
        return make(*argv[2:])
    if len(argv) != 3:
        usage = [line.strip() for line in __doc__.splitlines() if "patchwise_torch.py " in line]
        print("usage:\n  " + "\n  ".join(usage), file=sys.stderr)
        return 2
    model = load(argv[1])
    expected = torch.load(argv[2])
    with torch.no_grad():
        log_probs, patch_logits = model(expected["images"])
    worst = 0.0
    for name, got in (("log_probs", log_probs), ("patch_logits", patch_logits)):
        diff = (got - expected[name]).abs().max().item()
        print(f"{name}: max |difference| {diff:.3g}")
        worst = max(worst, diff)
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

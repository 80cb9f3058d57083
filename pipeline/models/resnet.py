"""BatchNorm ResNet baseline (ResNet-50 v1.5 bottlenecks, optional SE), for NF-vs-BN comparisons.

Same API as NFNet: forward_features / forward_head / get_classifier / reset_classifier.
Its batch statistics depend on the per-replica batch, which is exactly what the NF comparison
across batch sizes is about; ``pipeline.models.precise_bn`` recomputes population statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.base import ImageClassifier
from pipeline.models.registry import register_variants


@dataclass(frozen=True)
class ResNetCfg:
    depths: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (256, 512, 1024, 2048)
    stem_ch: int = 64
    bottle_ratio: float = 0.25
    se_ratio: float = 0.0
    drop_rate: float = 0.0
    zero_init_last_bn: bool = True
    train_res: int = 224
    test_res: int = 224


def _conv_bn(in_ch: int, out_ch: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(out_ch)
    )


class Bottleneck(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, cfg: ResNetCfg) -> None:
        super().__init__()
        mid = int(out_ch * cfg.bottle_ratio)
        self.conv1 = _conv_bn(in_ch, mid, 1)
        self.conv2 = _conv_bn(mid, mid, 3, stride)  # stride on the 3x3 (v1.5)
        self.conv3 = _conv_bn(mid, out_ch, 1)
        if cfg.zero_init_last_bn:
            nn.init.zeros_(self.conv3[1].weight)
        self.se = None
        if cfg.se_ratio > 0:
            hidden = max(1, int(out_ch * cfg.se_ratio))
            self.se = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(out_ch, hidden, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, out_ch, 1),
                nn.Sigmoid(),
            )
        self.shortcut = (
            _conv_bn(in_ch, out_ch, 1, stride) if stride > 1 or in_ch != out_ch else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x), inplace=True)
        out = F.relu(self.conv2(out), inplace=True)
        out = self.conv3(out)
        if self.se is not None:
            out = out * self.se(out)
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNet(ImageClassifier):
    def __init__(self, cfg: ResNetCfg, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            *_conv_bn(in_chans, cfg.stem_ch, 7, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        blocks, ch = [], cfg.stem_ch
        for i, (depth, width) in enumerate(zip(cfg.depths, cfg.widths, strict=True)):
            for j in range(depth):
                blocks.append(Bottleneck(ch, width, 2 if (j == 0 and i > 0) else 1, cfg))
                ch = width
        self.blocks = nn.Sequential(*blocks)
        self.num_features = ch
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


RESNET_VARIANTS: dict[str, ResNetCfg] = {
    "resnet50": ResNetCfg(),
    "seresnet50": ResNetCfg(se_ratio=1 / 16),
    # CPU-sized baseline with the same block structure as resnet50.
    "resnet_nano": ResNetCfg(
        depths=(1, 1, 2, 1), widths=(32, 64, 128, 256), stem_ch=16, train_res=64, test_res=80
    ),
}


register_variants(RESNET_VARIANTS, lambda cfg, num_classes: ResNet(cfg, num_classes), "resnet")

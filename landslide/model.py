"""The two-branch model: a timm backbone on the optical bands, a small CNN on SAR, an attention gate.

The model sees standardised patches ``(B, C, 64, 64)`` and a cloud score ``(B,)``; it picks its
branches' channels with index buffers derived from band names, and upsamples the optical input
inside ``forward`` so exported graphs take native 64 px patches. :class:`LandslideNet` wraps it with
the fold's normalisation so one module maps raw patches to logits (the unit every runner exports).
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from landslide.bands import BandLayout
from landslide.errors import ConfigError
from landslide.preprocess import Normalize

log = logging.getLogger(__name__)

FUSIONS = ("attention", "concat")
MODALITIES = ("both", "optical", "sar")


@dataclass
class ModelConfig:
    backbone: str = "test_efficientnet"  # any timm model name
    img_size: int = 0                    # optical branch input size; 0 keeps the native 64 px
    fusion: str = "attention"
    modalities: str = "both"
    dropout: float = 0.3
    gate_hidden: int = 128
    pretrained: str = ""                 # local timm checkpoint; "" = random init (logged)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_arch(spec: str) -> tuple[str, int]:
    """``"efficientnet_b5@384"`` -> ``("efficientnet_b5", 384)``; no ``@`` keeps native size (0)."""
    name, _, size = spec.partition("@")
    fix = "write NAME or NAME@SIZE, e.g. efficientnet_b5@384"
    try:
        px = int(size) if size else 0
    except ValueError:
        raise ConfigError(f"bad architecture spec {spec!r}", fix=fix) from None
    if not name:
        raise ConfigError(f"bad architecture spec {spec!r}: no backbone name before '@'", fix=fix)
    # The backbones downsample by 32: a smaller SIZE leaves them no pixel to see, and "@0" would be read
    # as the native size the user did not write.
    if size and px < 32:
        raise ConfigError(f"bad architecture spec {spec!r}: SIZE {px} px is below 32 (the backbones' stride)",
                          fix=f"write {name} for the native 64 px, or {name}@SIZE with SIZE 32 or more, e.g. {name}@224")
    return name, px


class SARBranch(nn.Module):
    """The seed's 3-layer CNN: C_sar -> 32 -> 64 -> 64, global average pooled to 64 features."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate([(in_ch, 32), (32, 64), (64, 64)]):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
        self.net = nn.Sequential(*layers)
        self.num_features = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean((2, 3))


def check_model_config(cfg: ModelConfig) -> None:
    """What would only fail once a fold starts (a backbone name, a weights file), checked up front."""
    import timm

    names = timm.list_models()
    if cfg.backbone not in names:
        import difflib

        close = difflib.get_close_matches(cfg.backbone, names, n=3, cutoff=0.8)  # over 1,000 names: say which
        raise ConfigError(f"unknown timm backbone {cfg.backbone!r}",
                          fix=(f"did you mean {', '.join(close[:-1]) + ' or ' if close[1:] else ''}{close[-1]}? Otherwise "
                               if close else "") + "pick a name from timm.list_models()")
    if cfg.pretrained and not Path(cfg.pretrained).is_file():
        raise ConfigError("pretrained checkpoint not found", file=cfg.pretrained,
                          fix="pass a local timm checkpoint file (no network access at run time)")


def check_pretrained(cfg: ModelConfig, layout: BandLayout) -> None:
    """Load ``cfg.pretrained`` once, before a run folder is written: a file that is not this backbone's
    weights is refused here, not as a traceback when fold 0 builds its model."""
    if cfg.pretrained and cfg.modalities != "sar" and layout.optical_idx:
        create_backbone(cfg, len(layout.optical_idx), announce=False)


def create_backbone(cfg: ModelConfig, in_chans: int, announce: bool = True) -> nn.Module:
    import timm

    check_model_config(cfg)
    kw = dict(in_chans=in_chans, num_classes=0, global_pool="avg")
    if cfg.pretrained:
        path = Path(cfg.pretrained)
        try:
            # timm loads the file and adapts the 3-channel stem to in_chans (adapt_input_conv).
            model = timm.create_model(cfg.backbone, pretrained=True,
                                      pretrained_cfg_overlay=dict(file=str(path)), **kw)
        except (RuntimeError, ValueError, KeyError, OSError, EOFError, pickle.UnpicklingError) as e:
            # torch.load's or load_state_dict's own words, cut to their first lines (a size-mismatch list runs long).
            said = " ".join(str(e).strip().splitlines()[:2])
            raise ConfigError(f"cannot load it as {cfg.backbone} weights ({e.__class__.__name__}: {said[:300]})",
                              file=path, fix=f"pass a timm state_dict file (.pth/.bin/.safetensors) of {cfg.backbone} "
                                             f"itself, e.g. torch.save(timm.create_model({cfg.backbone!r}, "
                                             "pretrained=True).state_dict(), PATH)") from None
        if announce:
            log.info("optical backbone %s: weights from %s (stem adapted to %d bands)", cfg.backbone, path, in_chans)
        return model
    if announce:  # not when the weights are about to come from a trained checkpoint
        log.info("optical backbone %s: random init (no --pretrained given)", cfg.backbone)
    return timm.create_model(cfg.backbone, pretrained=False, **kw)


class LandslideModel(nn.Module):
    """Standardised ``(B, C, H, W)`` + cloud ``(B,)`` -> logits ``(B,)``."""

    def __init__(self, cfg: ModelConfig, layout: BandLayout, announce: bool = True) -> None:
        super().__init__()
        if cfg.fusion not in FUSIONS:
            raise ConfigError(f"fusion {cfg.fusion!r} unknown", fix=f"use one of {FUSIONS}")
        if cfg.modalities not in MODALITIES:
            raise ConfigError(f"modalities {cfg.modalities!r} unknown", fix=f"use one of {MODALITIES}")
        self.cfg = cfg
        opt_idx, sar_idx = layout.optical_idx, layout.sar_idx
        self.use_optical = cfg.modalities in ("both", "optical") and bool(opt_idx)
        self.use_sar = cfg.modalities in ("both", "sar") and bool(sar_idx)
        if not (self.use_optical or self.use_sar):
            raise ConfigError(f"modalities={cfg.modalities} but the data has bands {layout.to_list()}",
                              fix="pick --modalities that the data's bands.txt provides")
        self.register_buffer("optical_idx", torch.as_tensor(opt_idx, dtype=torch.long), persistent=False)
        self.register_buffer("sar_idx", torch.as_tensor(sar_idx, dtype=torch.long), persistent=False)
        dim = 0
        if self.use_optical:
            self.optical = create_backbone(cfg, len(opt_idx), announce)
            # timm: pooled output width is head_hidden_size where a model has a pre-logits head (MobileNetV3).
            dim += getattr(self.optical, "head_hidden_size", None) or self.optical.num_features
        if self.use_sar:
            self.sar = SARBranch(len(sar_idx))
            dim += self.sar.num_features
        self.gate = None
        if cfg.fusion == "attention":
            self.gate = nn.Sequential(nn.Linear(dim + 1, cfg.gate_hidden), nn.ReLU(inplace=True),
                                      nn.Linear(cfg.gate_hidden, dim), nn.Sigmoid())
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor, cloud: torch.Tensor) -> torch.Tensor:
        # index_select returns an NCHW-contiguous tensor whatever its input's layout: a channels-last
        # batch is put back in channels-last (the 4- and 8-band slices, before the upsampling, which keeps
        # the layout), or cuDNN would transpose every branch's input to meet its channels-last weights.
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)

        def select(idx: torch.Tensor) -> torch.Tensor:
            xs = x.index_select(1, idx)
            return xs.contiguous(memory_format=torch.channels_last) if channels_last else xs

        feats = []
        if self.use_optical:
            xo = select(self.optical_idx)
            if self.cfg.img_size and self.cfg.img_size != xo.shape[-1]:
                xo = F.interpolate(xo, size=(self.cfg.img_size, self.cfg.img_size), mode="bilinear",
                                   align_corners=False)
            feats.append(self.optical(xo))
        if self.use_sar:
            feats.append(self.sar(select(self.sar_idx)))
        f = torch.cat(feats, 1) if len(feats) > 1 else feats[0]
        if self.gate is not None:
            f = f * self.gate(torch.cat([f, cloud.to(f.dtype).unsqueeze(1)], 1))
        return self.head(f).squeeze(1)


class LandslideNet(nn.Module):
    """Raw median-filtered patches ``(B, C, 64, 64)`` -> logits ``(B,)``: one fold's normalisation + model."""

    def __init__(self, model: LandslideModel, normalize: Normalize) -> None:
        super().__init__()
        self.normalize = normalize
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, cloud = self.normalize(x)
        return self.model(z, cloud)


def tta_views(x: torch.Tensor) -> torch.Tensor:
    """Stack the 4 flip views (identity, h, v, hv) of ``(B, C, H, W)`` into one ``(4B, C, H, W)`` batch."""
    return torch.cat([x, x.flip(3), x.flip(2), x.flip((2, 3))], 0)


def tta_mean(logits: torch.Tensor) -> torch.Tensor:
    """``(4B,)`` logits of :func:`tta_views` -> ``(B,)`` mean probability over the views."""
    return torch.sigmoid(logits.float()).reshape(4, -1).mean(0)

"""Mass detector (Li et al.): torchvision's FCOS on a contrastive encoder's ResNet backbone.

As in torchvision's ``fcos_resnet50_fpn``: an FPN over ``layer2``-``layer4`` plus P6/P7
(five levels, strides 8-128) and FCOS's shared head, here with ``weights=None`` and
``weights_backbone=None`` (nothing can be downloaded) and the backbone copied from a
pre-trained :class:`~fedmammo.models.contrastive.ContrastiveEncoder` when one is given.
Images are 1-channel in [0, 1] and are not renormalised (mean 0, std 1), so the detector sees
what the encoder saw during pre-training; the transform does not resize either (``min_size``
and ``max_size`` are the image's sides). Class 1 is "mass"; class 0 is unused (background).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from fedmammo.errors import ConfigError
from fedmammo.models.contrastive import (
    ContrastiveEncoder,
    build_contrastive_encoder,
    stage_channels,
)
from fedmammo.models.registry import register_model

__all__ = ["build_fcos"]


def build_fcos(
    *,
    image_size: Sequence[int],
    encoder: ContrastiveEncoder | None = None,
    arch: str = "resnet50",
    norm: str = "batch",
    width: int = 16,
    fpn_channels: int | None = None,
    num_classes: int = 2,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.6,
    detections_per_img: int = 20,
) -> FCOS:
    """Return an FCOS detector whose backbone is a copy of ``encoder``'s (or a fresh one).

    ``image_size`` is (H, W) of the input images. ``fpn_channels`` defaults to 256 (the
    paper's FCOS) for ResNet-18/50 and to twice the last stage's width for the slim ResNet.
    ``score_thresh`` is low (0.05) so that evaluation sees the whole precision-recall curve.
    """
    if len(image_size) != 2 or min(image_size) < 32:
        raise ConfigError(f"FCOS image_size must be (H, W) with sides >= 32, got {image_size}")
    if encoder is None:
        encoder = build_contrastive_encoder(arch=arch, norm=norm, width=width)  # type: ignore[arg-type]
    backbone = copy.deepcopy(encoder.backbone)
    channels = stage_channels(backbone)
    if fpn_channels is None:
        fpn_channels = 256 if encoder.arch != "resnet_slim" else 2 * channels[-1]
    body = BackboneWithFPN(
        backbone,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=channels[1:],
        out_channels=fpn_channels,
        extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),
    )
    return FCOS(
        body,
        num_classes=num_classes,
        min_size=min(image_size),
        max_size=max(image_size),
        image_mean=[0.0] * backbone.conv1.in_channels,
        image_std=[1.0] * backbone.conv1.in_channels,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )


@register_model("fcos")
def fcos(**options) -> FCOS:
    """FCOS mass detector (options: image_size, encoder, arch, norm, width, fpn_channels, ...)."""
    return build_fcos(**options)

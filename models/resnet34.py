"""Task 2's baseline: torchvision's ResNet34, trained from scratch with the shallow nets' recipe."""
import torchvision

from .registry import register
from .rgb_only import RGBOnly


@register("resnet34", task=2)
def resnet34(num_classes):
    """torchvision's ResNet34, randomly initialised (never pretrained)."""
    return RGBOnly(torchvision.models.resnet34(weights=None, num_classes=num_classes))

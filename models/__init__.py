"""Model registry (``create_model``, ``list_models``) and ``inference_form``. Importing this
package registers every model."""
import copy

from . import channel_models, resnet34, rrdb, shallow  # noqa: F401  (registration side effects)
from .registry import create_model, list_models, register  # noqa: F401


def inference_form(model, channels=None):
    """The one verb for every model's inference form: a copy in eval mode that computes what
    ``model`` computes in eval mode, the model itself left as it was.

    * Task 2 models fold their re-parameterised branches into plain convolutions (RepVGG's
      ``deploy()``, idempotent; ``deploy=True`` builds that form to load its state dict); they
      take RGB only.
    * Task 1 models, given ``channels`` (e.g. "GB"), become a plain network for that combination
      (``for_channels``: the stem an ordinary convolution, BatchNorm fixed to that set); without
      ``channels`` they stay channel-adaptive.

    Raises ValueError for a combination a model cannot take."""
    channels = tuple(channels) if channels is not None else None
    if hasattr(model, "for_channels"):
        return model.for_channels(channels) if channels is not None else copy.deepcopy(model).eval()
    if channels not in (None, tuple("RGB")):
        raise ValueError(f"{type(model).__name__} takes RGB only, not {''.join(channels)}")
    model = copy.deepcopy(model)
    if hasattr(model, "deploy"):
        model.deploy()
    return model.eval()

"""Model registry. Importing this package registers every model."""
from . import channel_models, shallow  # noqa: F401  (registration side effects)
from .registry import create_model, list_models, register  # noqa: F401


def deploy(model):
    """The inference form of a model: re-parameterised branches folded where the model has them."""
    if hasattr(model, "deploy"):
        model.deploy()
    return model

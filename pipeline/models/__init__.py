"""Model zoo: NFNets (F0..F7, F3+, F7+, nano CPU family) and the BatchNorm ResNet baseline."""

from pipeline.models import nfnet, resnet  # noqa: F401  (registers the models)
from pipeline.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]

"""GoogLeNet (Inception v1) from scratch: the package the notebook course imports."""

from inception.model import (
    INCEPTION_TABLE,
    MODELS,
    ConvBNReLU,
    GoogLeNet,
    GoogLeNetOutputs,
    Inception,
    InceptionAux,
    build_model,
    count_parameters,
    list_models,
)
from inception.runtime import (
    choose_precision,
    default_device,
    describe_runtime,
    quick_mode,
    seed_everything,
)

__all__ = [
    "INCEPTION_TABLE", "MODELS", "ConvBNReLU", "GoogLeNet", "GoogLeNetOutputs", "Inception", "InceptionAux",
    "build_model", "count_parameters", "list_models",
    "choose_precision", "default_device", "describe_runtime", "quick_mode", "seed_everything",
]

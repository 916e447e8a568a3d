"""GoogLeNet (Inception v1) from scratch: the package the notebook course imports."""

from inception.model import (
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

__all__ = [
    "MODELS", "ConvBNReLU", "GoogLeNet", "GoogLeNetOutputs", "Inception", "InceptionAux",
    "build_model", "count_parameters", "list_models",
]

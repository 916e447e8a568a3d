"""GoogLeNet (Inception v1) from scratch: the package the notebook course imports.

`inception.plots` is not imported here, so training never needs matplotlib.
"""

from inception.data import CifarData, DeviceLoader, ImageData, load_cifar, load_folder
from inception.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    DatasetError,
    DistributedError,
    InceptionError,
    ModelInputError,
    TrainingError,
    WeightsError,
    WeightsNotFoundError,
)
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
    fold_batchnorm,
    list_models,
)
from inception.predict import predict_images
from inception.runtime import (
    choose_precision,
    default_device,
    describe_runtime,
    quick_mode,
    seed_everything,
)
from inception.train import PRESETS, TrainConfig, fit, get_preset, load_checkpoint
from inception.weights import (
    TorchvisionWeights,
    Weights,
    available_weights,
    get_weights,
    load_reference,
)

__all__ = [
    "CifarData", "DatasetError", "DeviceLoader", "ImageData", "load_cifar", "load_folder",
    "InceptionError", "ConfigError", "CheckpointError", "CheckpointNotFoundError",
    "ModelInputError", "TrainingError", "WeightsError", "WeightsNotFoundError", "DistributedError",
    "INCEPTION_TABLE", "MODELS", "ConvBNReLU", "GoogLeNet", "GoogLeNetOutputs", "Inception",
    "InceptionAux", "build_model", "count_parameters", "fold_batchnorm", "list_models",
    "choose_precision", "default_device", "describe_runtime", "quick_mode", "seed_everything",
    "PRESETS", "TrainConfig", "fit", "get_preset", "load_checkpoint", "predict_images",
    "Weights", "TorchvisionWeights", "available_weights", "get_weights", "load_reference",
]

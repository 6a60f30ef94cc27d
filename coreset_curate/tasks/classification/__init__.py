"""Image classification: the model registry and the CIFAR/ImageNet models (``models``)."""

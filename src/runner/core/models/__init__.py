from .resnet import MODELS, build_resnet

__all__ = ["MODELS", "build_resnet"]

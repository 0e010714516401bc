"""runner: an experiment runner for CIFAR-10 ResNet optimizer studies (L2 vs decoupled weight
decay).

Kept free of heavy imports so that `python -m runner --help` and tab completion stay quick.
"""

__version__ = "0.1.0"

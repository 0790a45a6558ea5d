"""MNIST (LeCun et al., 1998): 28x28 grey handwritten digits, 60,000 training and 10,000 test images."""

from robust_cli.data.sets import register_loader
from robust_cli.data.sets._torchvision import torchvision_loader

load = register_loader(torchvision_loader("MNIST", "MNIST"))

"""CIFAR-10 (Krizhevsky, 2009): 32x32 colour images of 10 classes, 50,000 training and 10,000 test images."""

from robust_cli.data.sets import register_loader
from robust_cli.data.sets._torchvision import torchvision_loader

load = register_loader(torchvision_loader("CIFAR10", "cifar-10-batches-py"))

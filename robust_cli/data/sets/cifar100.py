"""CIFAR-100 (Krizhevsky, 2009): 32x32 colour images of 100 classes, 50,000 training and 10,000 test images."""

from robust_cli.data.sets import register_loader
from robust_cli.data.sets._torchvision import torchvision_loader

load = register_loader(torchvision_loader("CIFAR100", "cifar-100-python"))

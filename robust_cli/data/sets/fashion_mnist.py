"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 28x28 grey images of 10 kinds of clothing, 60,000 training
and 10,000 test images."""

from robust_cli.data.sets import register_loader
from robust_cli.data.sets._torchvision import torchvision_loader

load = register_loader(torchvision_loader("FashionMNIST", "FashionMNIST"))

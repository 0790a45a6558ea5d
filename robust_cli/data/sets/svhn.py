"""SVHN (Netzer et al., 2011): 32x32 colour crops of house-number digits, 73,257 training and 26,032 test
images (the ``extra`` split is not read)."""

from robust_cli.data.sets import register_loader
from robust_cli.data.sets._torchvision import torchvision_loader

load = register_loader(torchvision_loader("SVHN", "svhn", split_keyword=True, labels_attr="labels"))

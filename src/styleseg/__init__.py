"""styleseg: CT segmentation across texture shift by style-generator data augmentation.

Implements and extends Bhosale, Krishna, Wang, Mueller, "Improving CT Image Segmentation Accuracy
Using StyleGAN Driven Data Augmentation" (arXiv 2302.03285, 2023).
"""

from __future__ import annotations

__version__ = "0.1.0"

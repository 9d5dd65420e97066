"""Steering-vector methods: activations in, SteeringVector out (CAA, PCA, ActAdd, PAS, and the
out-of-distribution candidates: multi-format CAA, BiPO, persona vectors, BiPO on persona answers)."""

from .actadd import train_actadd
from .bipo import BiPOConfig, bipo_loss, completion_pairs, train_bipo, train_bipo_layers
from .caa import caa_from_activations, mean_difference, train_caa
from .multiformat import MultiformatConfig, train_multiformat
from .pas import train_pas
from .pca import pca_direction, train_pca
from .persona import PersonaConfig, Trait, load_trait, persona_questions, train_persona
from .persona_bipo import persona_pairs, train_persona_bipo

__all__ = ["train_caa", "train_pca", "train_actadd", "train_pas", "caa_from_activations", "mean_difference", "pca_direction",
           "train_multiformat", "MultiformatConfig", "train_bipo", "train_bipo_layers", "BiPOConfig", "bipo_loss", "completion_pairs",
           "train_persona", "PersonaConfig", "Trait", "load_trait", "persona_questions", "train_persona_bipo",
           "persona_pairs"]

"""SADCL (Ma et al., 2023) for full labels: network, losses, method."""
from .config import SADCLConfig
from .losses import asymmetric_loss, present_features, prototype_to_sample_loss, sample_to_sample_loss
from .method import SADCL
from .net import SADCLNet, load_prototypes, sine_position_embedding

__all__ = ["SADCL", "SADCLConfig", "SADCLNet", "asymmetric_loss", "load_prototypes", "present_features",
           "prototype_to_sample_loss", "sample_to_sample_loss", "sine_position_embedding"]

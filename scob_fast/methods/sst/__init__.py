"""SST (Chen et al., AAAI 2022) for partial labels: network, losses, semantic transfer, method."""
from .config import SSTConfig
from .losses import cooccurrence_loss, feature_distance_loss, pair_index, pair_matrix
from .method import SST
from .net import GatedGraph, SemanticDecoupling, SSTNet, label_graph, load_class_embeddings
from .transfer import FeatureBank, cross_pseudo_labels, intra_pseudo_labels, threshold_at

__all__ = ["SST", "SSTConfig", "SSTNet", "SemanticDecoupling", "GatedGraph", "FeatureBank", "label_graph",
           "cooccurrence_loss", "feature_distance_loss", "pair_index", "pair_matrix", "cross_pseudo_labels",
           "intra_pseudo_labels", "threshold_at", "load_class_embeddings"]

"""Readers of the official on-disk layouts (nothing is downloaded), one module per format.

Each returns (class_names, image_paths, labels [N, C] uint8) of one OFFICIAL list with FULL labels
and raises `DatasetError` naming the file and what is wrong. Which images without a label a reader
drops is one rule for all formats (readers/files.py says which and why). Which reader a dataset
name uses, with which arguments, is the registry's business (scob_fast.data.registry).
"""
from .coco import COCO_LAYOUT, read_coco
from .folder import FOLDER_LAYOUT, read_folder
from .lists import LIST_LAYOUT, read_list_format
from .vg import VG200_LAYOUT, read_vg
from .voc import VOC_CLASSES, VOC_LAYOUT, read_voc

__all__ = ["COCO_LAYOUT", "read_coco", "FOLDER_LAYOUT", "read_folder", "LIST_LAYOUT", "read_list_format",
           "VG200_LAYOUT", "read_vg", "VOC_CLASSES", "VOC_LAYOUT", "read_voc"]

"""Datasets: in-distribution and OOD sources, decoded once into uint8 ImageSets."""

from c2ir.data.imageset import ImageSet, Normalizer
from c2ir.data.sources import load_id, load_ood

__all__ = ["ImageSet", "Normalizer", "load_id", "load_ood"]

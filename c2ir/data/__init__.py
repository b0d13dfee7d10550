"""Datasets: in-distribution and OOD sources as torch Datasets, read in batches by `loader.BatchStream`."""

from c2ir.data.imageset import ImageSet, Normalizer, StreamedSet
from c2ir.data.loader import BatchStream, materialize
from c2ir.data.sources import load_id, load_ood

__all__ = ["BatchStream", "ImageSet", "Normalizer", "StreamedSet", "load_id", "load_ood", "materialize"]

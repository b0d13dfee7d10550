"""c2ir: data-free OOD detection by class-conditional impressions reappearing (Chen et al., ICASSP 2023)."""

__version__ = "0.1.0"

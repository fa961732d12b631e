"""segcentroids: five segmentation papers reproduced around one shared model and training stack."""

__version__ = "0.1.0"

"""Build machine-learning-ready HDF5 datasets from the TGLC light curves on MAST."""

__version__ = "0.1.0"

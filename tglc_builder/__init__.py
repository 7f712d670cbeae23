"""Build machine-learning-ready HDF5 datasets from the TGLC light curves on MAST."""

__version__ = "0.1.0"
__all__ = ["load_tglc", "open_stars", "__version__"]


def __getattr__(name: str):
    # Lazy, so build workers do not import `datasets` just to download or convert.
    if name == "load_tglc":
        from .loading import load_tglc

        return load_tglc
    if name == "open_stars":
        from .stars import open_stars

        return open_stars
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

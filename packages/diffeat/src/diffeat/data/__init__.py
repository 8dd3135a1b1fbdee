"""Dataset readers."""

from diffeat.data.spair import SPairDataset

__all__ = ["SPairDataset"]

"""Placeholder until the bsa kernel lands (GPU kernels issue): it always reports that it cannot run."""

from .base import SparseAttentionBackend


class BlockSparseAttnBackend(SparseAttentionBackend):
    name = "bsa"

    def not_supported_reasons(self, inputs):
        return ["not implemented yet"]

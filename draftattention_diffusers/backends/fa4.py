"""Placeholder until the fa4 kernel lands (GPU kernels issue): it always reports that it cannot run."""

from .base import SparseAttentionBackend


class FA4Backend(SparseAttentionBackend):
    name = "fa4"

    def not_supported_reasons(self, inputs):
        return ["not implemented yet"]

"""Placeholder until the flex kernel lands (GPU kernels issue): it always reports that it cannot run."""

from .base import SparseAttentionBackend


class FlexBackend(SparseAttentionBackend):
    name = "flex"

    def not_supported_reasons(self, inputs):
        return ["not implemented yet"]

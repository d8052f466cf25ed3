"""Max difference of one dense transformer forward with draft attention's default dense path
(``dense_backend="auto"``: flash-attn-4 dense on Hopper) against diffusers' default attention, full-size Wan2.1 1.3B
at 480p (random weights, bf16). Usage: python scripts/dense_step_diff.py"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark_e2e import build, inputs  # noqa: E402

from draftattention_diffusers import draft_attention_enabled, get_draft_stats  # noqa: E402


def main() -> None:
    device, dtype = torch.device("cuda"), torch.bfloat16
    model = build("wan1.3b-480p", device, dtype)
    kw = inputs("wan1.3b-480p", device, dtype)
    with torch.no_grad():
        default = model(**kw)[0].float()
        with draft_attention_enabled(model, dense_steps_fraction=1.0):  # every call dense, dense_backend="auto"
            ours = model(**kw)[0].float()
            stats = get_draft_stats(model).summary()
        again = model(**kw)[0].float()
    print(f"dense calls: {stats['dense_calls']}; default vs default again: max|diff| "
          f"{(again - default).abs().max().item():.3e}")
    print(f"dense_backend='auto' (flash-attn-4) vs diffusers default: max|diff| {(ours - default).abs().max().item():.3e}"
          f", max|default| {default.abs().max().item():.3e}, relative "
          f"{((ours - default).abs().max() / default.abs().max()).item():.3e}")


if __name__ == "__main__":
    main()

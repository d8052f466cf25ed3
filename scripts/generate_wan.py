"""Wan2.1 / Wan2.2 text-to-video with draft attention: the whole change is one `enable_draft_attention` line.

    python scripts/generate_wan.py --prompt "A cat walks on the grass, realistic style."
    python scripts/generate_wan.py --model Wan-AI/Wan2.2-T2V-A14B-Diffusers --steps 40 --offload
"""

import argparse

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
from diffusers.utils import export_to_video

from draftattention_diffusers import enable_draft_attention, get_draft_stats

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", default="Wan-AI/Wan2.1-T2V-14B-Diffusers", help="hub id or local folder")
p.add_argument("--prompt", default="A cat walks on the grass, realistic style.")
p.add_argument("--height", type=int, default=720)
p.add_argument("--width", type=int, default=1280)
p.add_argument("--frames", type=int, default=81)
p.add_argument("--steps", type=int, default=50)
p.add_argument("--flow-shift", type=float, help="Wan2.1: 5.0 for 720p, 3.0 for 480p (default: the model's)")
p.add_argument("--sparsity", type=float, default=0.9)
p.add_argument("--offload", action="store_true", help="model CPU offload (less GPU memory)")
p.add_argument("--output", default="wan_draft.mp4")
args = p.parse_args()

vae = AutoencoderKLWan.from_pretrained(args.model, subfolder="vae", dtype=torch.float32)  # VAE in fp32
pipe = WanPipeline.from_pretrained(args.model, vae=vae, dtype=torch.bfloat16)
if args.flow_shift is not None:
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=args.flow_shift)
if args.offload:
    pipe.enable_model_cpu_offload()
else:
    pipe.to("cuda")

# Dense for the first 25% of the steps and in block 0, then 90% of the video attention tiles skipped.
enable_draft_attention(pipe, sparsity=args.sparsity, dense_layers=[0])

video = pipe(prompt=args.prompt, height=args.height, width=args.width, num_frames=args.frames,
             num_inference_steps=args.steps, generator=torch.Generator().manual_seed(42)).frames[0]
export_to_video(video, args.output, fps=16)
print(get_draft_stats(pipe).format())

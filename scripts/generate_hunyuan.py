"""HunyuanVideo text-to-video with draft attention: the whole change is one `enable_draft_attention` line.

    python scripts/generate_hunyuan.py --prompt "A cat walks on the grass, realistic style."
    python scripts/generate_hunyuan.py --height 544 --width 960 --frames 61 --offload
"""

import argparse

import torch
from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
from diffusers.utils import export_to_video

from draftattention_diffusers import enable_draft_attention, get_draft_stats

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", default="hunyuanvideo-community/HunyuanVideo", help="hub id or local folder")
p.add_argument("--prompt", default="A cat walks on the grass, realistic style.")
p.add_argument("--height", type=int, default=720)
p.add_argument("--width", type=int, default=1280)
p.add_argument("--frames", type=int, default=129)
p.add_argument("--steps", type=int, default=50)
p.add_argument("--sparsity", type=float, default=0.9)
p.add_argument("--offload", action="store_true", help="model CPU offload (less GPU memory)")
p.add_argument("--output", default="hunyuan_draft.mp4")
args = p.parse_args()

transformer = HunyuanVideoTransformer3DModel.from_pretrained(args.model, subfolder="transformer", dtype=torch.bfloat16)
pipe = HunyuanVideoPipeline.from_pretrained(args.model, transformer=transformer, dtype=torch.float16)
pipe.vae.enable_tiling()
if args.offload:
    pipe.enable_model_cpu_offload()
else:
    pipe.to("cuda")

# Dense for the first 25% of the steps and in the first two dual-stream blocks, then 90% of the tiles skipped.
enable_draft_attention(pipe, sparsity=args.sparsity, dense_layers=[0, 1])

video = pipe(prompt=args.prompt, height=args.height, width=args.width, num_frames=args.frames,
             num_inference_steps=args.steps, generator=torch.Generator().manual_seed(42)).frames[0]
export_to_video(video, args.output, fps=24)
print(get_draft_stats(pipe).format())

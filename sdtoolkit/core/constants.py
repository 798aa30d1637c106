"""Names and numbers the whole toolkit shares, light to import (the CLIs check flags before any heavy import)."""

SD_VERSIONS: dict[str, str] = {
    "sd_1_4": "CompVis/stable-diffusion-v1-4",
    "sd_1_5": "runwayml/stable-diffusion-v1-5",
    "sd_2_1_base": "stabilityai/stable-diffusion-2-1-base",
    "sd_2_1": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
# OpenAI CLIP's image normalisation (its preprocessing config), used by the image encoder E(x)
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
# bounds checked at the door (docs/cli.md "Errors and bounds"): the DDIM schedule subsamples the 1000 training timesteps of every
# supported model; model inputs larger than 2048 px a side or more elongated than 4:1 are refused before allocating
MAX_DDIM_STEPS = 1000
MAX_SIDE = 2048
MAX_ASPECT = 4
DEFAULT_KEY = "default_"  # in a per-word tau_c dict: every token not named (prompt-to-prompt's key)
SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed accepts without wrapping (negative seeds refused)

"""Names the CLIs need before any heavy import (so bad flags fail fast)."""

SD_VERSIONS: dict[str, str] = {
    "sd_1_4": "CompVis/stable-diffusion-v1-4",
    "sd_1_5": "runwayml/stable-diffusion-v1-5",
}
METHODS = ("stylediffusion", "nulltext", "npi", "ddim")

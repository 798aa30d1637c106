"""StyleDiffusion toolkit: prompt-embedding inversion and P2Plus editing on current diffusers."""

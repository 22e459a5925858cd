"""What people do with latents beyond the core operations: interpolation, out-of-distribution
scores, FID/KID, flat latents for other tools."""

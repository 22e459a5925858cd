"""The NVAE family (Vahdat & Kautz 2020): config, network and official-format conversion, side by
side with the VDVAE modules of the parent package."""

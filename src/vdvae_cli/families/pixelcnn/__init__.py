"""PixelCNN++ (Salimans et al. 2017): an autoregressive model of pixels, a family with no latent layers."""

"""Model files as one layer: the torch-free header reader, safetensors read/write with strict key
checks, the catalogue of named models, verified downloads, the Hugging Face Hub, and the cache."""

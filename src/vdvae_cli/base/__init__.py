"""Model-free foundations: the error hierarchy, limits and safe text for untrusted input, atomic
file writes, file-kind sniffing and image files. Nothing here knows a model."""

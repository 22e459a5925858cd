"""The family-free engine: the interface every model family satisfies, the family registry, the
operations (encode, decode, sample, reconstruct, mix, ELBO), shared distributions, temperatures,
latents files, runtime choices and the contract between the trainer and a family's recipe."""

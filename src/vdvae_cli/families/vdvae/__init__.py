"""Very Deep VAEs (Child 2021): config, network, CPU kernels, official checkpoints, training recipe
and presets. :data:`.family.FAMILY` is what the registry hands out."""

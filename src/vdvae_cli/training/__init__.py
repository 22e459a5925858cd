"""The trainer's parts, one concern per module; :func:`vdvae_cli.training.loop.train` is the loop that uses them.

* :mod:`.schedule`   the learning rate of each step; defaults sized to the data and the time budget
* :mod:`.step`       one optimizer step: loss, backward, clipping, update skipping, EMA
* :mod:`.evaluation` held-out bits/dim and sample grids
* :mod:`.rundir`     the run folder: run.json, resumable state, the exported model, log.jsonl
* :mod:`.curves`     curves.png (refreshed at each evaluation) and TensorBoard event files
"""

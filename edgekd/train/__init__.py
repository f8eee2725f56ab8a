"""The training side's machinery (torch): ``engine`` (fit/evaluate), ``optim`` (optimizers and
schedules), ``distributed`` (devices, precision, seeding, DDP) and ``checkpoint`` (save/resume).

The stages (``edgekd.stages``) drive it; models, losses, quantization and export live beside it
in ``edgekd.models``, ``edgekd.losses``, ``edgekd.quant`` and ``edgekd.exporting``.
"""

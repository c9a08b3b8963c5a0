"""Neural architecture search: strategies over integer codes, scorers, and the driver that runs them.

A search space is ``num_choices: tuple[int, ...]`` (one entry per decision); an architecture is an
int32 code ``[D]`` and a population ``[P, D]``. A scorer is
``score_fn(codes [P, D] int32, rng_seed: int) -> scores [P] float`` (higher is better), called on
whole batches so a vmap-ed population evaluation pays off.
"""

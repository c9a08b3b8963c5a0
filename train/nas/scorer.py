"""Scoring members: the contract every strategy is written against, the one place that calls it, and
the scorer a NAS run builds from its config.

``score_fn(codes [P, D] int32, rng_seed: int) -> scores [P] float``, higher is better: training a
vmap-ed population for K steps, a zero-cost proxy, or a table lookup all fit. :class:`Scorer` picks
one for ``search.space`` and ``scorer.kind``: cells by training a vmap-ed population (``train``),
synflow (``synflow``) or a NAS-Bench-201-style table (``table``); the other spaces by training
(``train.nas.dense_population``, ``train.nas.hparam_population``).
"""

from __future__ import annotations

from typing import Protocol

import jax
import numpy as np

from archlab.arch.nas_cell import CellNet
from archlab.arch.search_space import CellSpace, genotype_from_string, genotype_to_string
from archlab.train.errors import SearchError
from archlab.train.nas.benchmark_table import TableError, load_table
from archlab.train.nas.config import make_space
from archlab.train.nas.dense_population import train_dense_population
from archlab.train.nas.hparam_population import train_hyperparameters
from archlab.train.nas.population import PopulationMemoryError, check_chunk_fits, digits_data, train_population
from archlab.train.nas.synflow import synflow_scores


class ScoreFn(Protocol):
    def __call__(self, codes: np.ndarray, rng_seed: int) -> np.ndarray: ...


def score_batch(score_fn: ScoreFn, codes, key) -> np.ndarray:
    """Scores a whole batch in one call, with an int seed taken from ``key`` (so runs replay exactly)."""
    codes = np.asarray(codes, np.int32)
    rng_seed = int(np.asarray(key, np.uint32)[-1] >> 1)  # a raw key's words are uniform bits: a 31-bit seed
    scores = np.asarray(score_fn(codes, rng_seed), np.float64)
    if scores.shape != (codes.shape[0],):
        raise ValueError(f"score_fn returned shape {scores.shape} for {codes.shape[0]} codes; expected ({codes.shape[0]},)")
    return scores


def new_key(seed: int) -> np.ndarray:
    """A raw uint32[2] PRNG key as a numpy array (orbax saves it like any other array)."""
    return np.asarray(jax.random.PRNGKey(seed))


def split_key(key: np.ndarray, num: int = 2) -> list[np.ndarray]:
    return list(np.asarray(jax.random.split(jax.numpy.asarray(key), num)))


# ------------------------------------------------------------------- the configured scorer


def describe_member(space, code) -> dict:
    """A history row's description of one member: ``genotype`` for cells, else ``member`` (words) and ``code``."""
    if isinstance(space, CellSpace):
        return {"genotype": genotype_to_string(code)}
    return {"member": space.describe(code), "code": [int(c) for c in code]}


def check_scorer_fits(config, data, *, members: int, batch_size: int, channels: int) -> None:
    """The population's own memory estimate (``train.nas.population.check_chunk_fits``) for one
    scorer chunk, as a SearchError naming the config keys to lower."""
    s = config.scorer
    try:
        check_chunk_fits(members, batch_size=batch_size, val_size=int(data.val_images.shape[0]), image_size=s.image_size,
                         channels=channels, devices=s.devices)
    except PopulationMemoryError as e:
        raise SearchError(f"{e} (--config.scorer.chunk, or the batch size / width)") from None


class Scorer:
    """``score_fn(codes, rng_seed) -> [P]`` for the configured space, plus what reports need (optimum when known)."""

    def __init__(self, config):
        s, self.kind, self.optimum = config.scorer, config.scorer.kind, None
        self.space_name, self.space = config.search.space, make_space(config)
        self.steps, self.chunk, self.batch, self.lr = config.search.steps_per_member, s.chunk, s.batch_size, s.learning_rate
        self.devices = s.devices
        if self.devices > jax.device_count():  # checked here, not in validate_nas_config: jax.distributed must start first
            raise SearchError(f"scorer.devices={self.devices} but {jax.device_count()} devices are visible "
                              f"(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)")
        if self.space_name == "dense":
            self.data = digits_data(config.dense.image_size)
            self.score_fn, self.unit = self._dense, f"val accuracy after {self.steps} steps"
            return
        if self.space_name == "hparams":
            h = self.space
            group = len(h.learning_rates) * len(h.weight_decays)  # the largest population one shape can have in a batch
            self.genotype = genotype_from_string(config.hparams.genotype)
            self.data = digits_data(s.image_size)
            check_scorer_fits(config, self.data, members=-(-group // s.chunk) * s.chunk, batch_size=max(h.batch_sizes),
                              channels=max(h.widths))
            self.score_fn, self.unit = self._hparams, f"val accuracy after {self.steps} steps"
            return
        if self.kind == "table":
            try:
                self.table = load_table(s.table)
            except TableError as e:
                raise SearchError(str(e)) from None
            self.optimum = float(self.table.optimum)
            self.score_fn, self.unit = self.table.score_fn, "table accuracy"
            return

        self.net = CellNet(channels=s.channels)
        self.data = digits_data(s.image_size)
        if self.kind == "train":
            check_scorer_fits(config, self.data, members=s.chunk, batch_size=s.batch_size, channels=s.channels)
        self.score_fn = self._train if self.kind == "train" else self._synflow
        self.unit = f"val accuracy after {self.steps} steps" if self.kind == "train" else "synflow score"

    def _chunks(self, codes):
        """Codes padded to whole chunks (repeats of the first row), so every call has one shape."""
        pad = -len(codes) % self.chunk
        padded = np.concatenate([codes, np.repeat(codes[:1], pad, axis=0)]) if pad else codes
        return [padded[i : i + self.chunk] for i in range(0, len(padded), self.chunk)]

    def _train(self, codes, rng_seed: int) -> np.ndarray:
        """One ``train_population`` program for the whole batch: ``scorer.chunk`` members at a time
        by ``lax.map`` inside it, each chunk split over ``scorer.devices`` devices."""
        codes = np.asarray(codes)
        padded = np.concatenate(self._chunks(codes))  # whole chunks: a batch size that recurs reuses its compiled program
        result = train_population(padded, jax.random.PRNGKey(rng_seed), self.data, self.steps, net=self.net,
                                  batch_size=self.batch, learning_rate=self.lr, chunk=self.chunk, devices=self.devices)
        return np.asarray(result["val_accuracy"])[: len(codes)] * 100.0

    def _dense(self, codes, rng_seed: int) -> np.ndarray:
        out = []
        for i, chunk in enumerate(self._chunks(np.asarray(codes))):
            result = train_dense_population(chunk, jax.random.fold_in(jax.random.PRNGKey(rng_seed), i), self.data, self.steps,
                                            space=self.space, batch_size=self.batch, learning_rate=self.lr)
            out.append(np.asarray(result["val_accuracy"]) * 100.0)
        return np.concatenate(out)[: len(codes)]

    def _hparams(self, codes, rng_seed: int) -> np.ndarray:
        result = train_hyperparameters(np.asarray(codes), jax.random.PRNGKey(rng_seed), self.data, self.steps, space=self.space,
                                       genotype=self.genotype, pad_to=self.chunk, devices=self.devices)
        return np.asarray(result["val_accuracy"]) * 100.0

    def _synflow(self, codes, rng_seed: int) -> np.ndarray:
        return np.concatenate([synflow_scores(c, jax.random.PRNGKey(rng_seed), net=self.net, image_size=self.data.train_images.shape[1]) for c in self._chunks(np.asarray(codes))])[: len(codes)]

    def best_fields(self, code) -> dict:
        """What best.json says about the best member: its description, and for hparams the values and the fixed cell."""
        fields = describe_member(self.space, code)
        if self.space_name == "hparams":
            h, code = self.space, [int(c) for c in code]
            fields["values"] = {"batch_size": h.batch_sizes[code[0]], "width": h.widths[code[1]],
                                "learning_rate": h.learning_rates[code[2]], "weight_decay": h.weight_decays[code[3]]}
            fields["genotype"] = genotype_to_string(self.genotype)
        return fields

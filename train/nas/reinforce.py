"""REINFORCE with an LSTM controller (Zoph & Le 2017) over a space given as ``num_choices``.

The controller makes one softmax decision per position, autoregressively: the embedding of each
decision is the next step's input. A whole batch of architectures is sampled in one jitted call;
the update (jitted too) minimises ``-(reward - baseline) * sum log p - entropy_weight * entropy`` with Adam,
where the baseline is a moving average of the batch-mean reward. Controller params, optimizer
state and baseline live in the search state, so a search resumes exactly.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from archlab.train.nas.history import History, append, empty_history
from archlab.train.nas.scorer import ScoreFn, new_key, score_batch, split_key
from archlab.train.nas.search_config import search_config
from archlab.train.nas.small_jit import small_jit
from archlab.train.nas.space_ops import check_num_choices


class Controller(nn.Module):
    """LSTM policy over codes: ``sample`` draws a batch, ``log_prob`` scores given codes.

    The decisions run as one ``lax.scan`` over a pure LSTM cell, so compile time does not grow with
    the number of decisions; per-decision embeddings and softmax heads are padded to the widest
    decision and masked, which lets decisions with different numbers of choices share the scan.
    """

    num_choices: tuple[int, ...]
    hidden: int = 32

    def setup(self):
        D, K, H = len(self.num_choices), max(self.num_choices), self.hidden
        self.start = self.param("start", nn.initializers.normal(0.1), (H,))
        self.embed = self.param("embed", nn.initializers.normal(0.1), (D, K, H))  # embedding of decision d's choice
        self.lstm_w = self.param("lstm_w", nn.initializers.lecun_normal(), (2 * H, 4 * H))
        self.lstm_b = self.param("lstm_b", nn.initializers.zeros, (4 * H,))
        # Small logits at init: the first policy is close to uniform, so the search starts by exploring.
        self.head_w = self.param("head_w", nn.initializers.normal(0.01), (D, H, K))
        self.head_b = self.param("head_b", nn.initializers.zeros, (D, K))

    def _unroll(self, batch: int, mode: str, key=None, codes=None):
        D, K, H = len(self.num_choices), max(self.num_choices), self.hidden
        start, embed, lstm_w, lstm_b, head_w, head_b = (self.start, self.embed, self.lstm_w, self.lstm_b,
                                                        self.head_w, self.head_b)
        valid = jnp.arange(K)[None, :] < jnp.asarray(self.num_choices)[:, None]  # [D, K]
        given = jnp.zeros((D, batch), jnp.int32) if codes is None else codes.T

        def step(carry, inputs):
            (c, h), x = carry
            d, given_d = inputs
            i, f, g, o = jnp.split(jnp.concatenate([x, h], -1) @ lstm_w + lstm_b, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            logits = jnp.where(valid[d], h @ head_w[d] + head_b[d], -1e9)  # -1e9, not -inf: 0 * -inf is NaN
            log_p = jax.nn.log_softmax(logits)
            if mode == "sample":
                choice = jax.random.categorical(jax.random.fold_in(key, d), log_p)
            elif mode == "greedy":
                choice = jnp.argmax(log_p, -1)
            else:
                choice = given_d
            choice = choice.astype(jnp.int32)
            picked = jnp.take_along_axis(log_p, choice[:, None], axis=1)[:, 0]
            entropy = -(jnp.exp(log_p) * log_p).sum(-1)
            return ((c, h), embed[d][choice]), (choice, picked, entropy, jnp.exp(log_p))

        zeros = jnp.zeros((batch, H))
        init = ((zeros, zeros), jnp.broadcast_to(start, (batch, H)))
        _, (choices, log_probs, entropies, probs) = jax.lax.scan(step, init, (jnp.arange(D), given))
        return choices.T, log_probs.sum(0), entropies.sum(0), probs

    def __call__(self, codes):
        return self.log_prob(codes)

    def sample(self, key, batch: int):
        """``(codes [B, D] int32, log_prob [B], entropy [B])`` for B fresh samples."""
        codes, log_prob, entropy, _ = self._unroll(batch, "sample", key=key)
        return codes, log_prob, entropy

    def log_prob(self, codes):
        """``(log_prob [B], entropy [B])`` of given codes (teacher forcing), differentiable."""
        _, log_prob, entropy, _ = self._unroll(codes.shape[0], "given", codes=codes)
        return log_prob, entropy

    def greedy_probs(self):
        """Per-decision probabilities along the argmax path, ``[D, max_choices]`` (0 past a decision's choices)."""
        return self._unroll(1, "greedy")[3][:, 0]


@struct.dataclass
class ReinforceState:
    params: Any
    opt_state: Any
    baseline: np.ndarray  # float32 []: moving average of the batch-mean reward
    key: np.ndarray  # uint32 [2]
    cycle: np.ndarray  # int32 []: updates taken
    history: History
    num_choices: tuple[int, ...] = struct.field(pytree_node=False)
    hidden: int = struct.field(pytree_node=False)


@functools.lru_cache(maxsize=16)
def _controller_programs(num_choices: tuple[int, ...], hidden: int):
    """The module's jitted init / sample / greedy-probabilities functions for one controller shape."""
    module = Controller(num_choices, hidden)
    init = small_jit(lambda key: module.init(key, jnp.zeros((1, len(num_choices)), jnp.int32)))
    sample = small_jit(lambda params, key, batch: module.apply(params, key, batch, method=Controller.sample),
                     static_argnums=2)
    probabilities = small_jit(lambda params: module.apply(params, method=Controller.greedy_probs))
    return init, sample, probabilities


@functools.lru_cache(maxsize=16)
def _update_program(num_choices: tuple[int, ...], hidden: int, learning_rate: float):
    """Adam and the jitted policy-gradient update for one controller shape and learning rate."""
    module, tx = Controller(num_choices, hidden), optax.adam(learning_rate)

    @small_jit
    def update(params, opt_state, codes, advantages, mask, entropy_weight):
        def loss_fn(p):
            log_prob, entropy = module.apply(p, codes, method=Controller.log_prob)
            per_sample = -advantages * log_prob - entropy_weight * entropy
            return (per_sample * mask).sum() / jnp.maximum(mask.sum(), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, update


def init_reinforce(seed: int, num_choices, config=None) -> ReinforceState:
    """A fresh controller (near-uniform policy), Adam state, and an empty history of ``search.budget`` rows."""
    cfg, num_choices = search_config(config), check_num_choices(num_choices)
    init, _, _ = _controller_programs(num_choices, cfg.controller_hidden)
    tx, _ = _update_program(num_choices, cfg.controller_hidden, cfg.controller_lr)
    key, init_key = split_key(new_key(seed))
    params = init(jnp.asarray(init_key))
    return ReinforceState(params=params, opt_state=tx.init(params), baseline=np.asarray(0.0, np.float32), key=key,
                          cycle=np.asarray(0, np.int32), history=empty_history(cfg.budget, len(num_choices)),
                          num_choices=num_choices, hidden=cfg.controller_hidden)


def reinforce_step(state: ReinforceState, score_fn: ScoreFn, config=None, *, max_evals: int | None = None) -> ReinforceState:
    """Samples ``search.controller_batch`` codes, scores them in one call, and takes one policy-gradient step.

    With ``max_evals`` below the batch, the full batch is still sampled (one compile) but only the first
    ``max_evals`` are scored and used. NaN rewards are left out of the update and the baseline.
    """
    cfg = search_config(config)
    if cfg.controller_hidden != state.hidden:
        raise ValueError(f"search.controller_hidden is {cfg.controller_hidden} but the state's controller has {state.hidden}")
    _, sample, _ = _controller_programs(state.num_choices, state.hidden)
    _, update = _update_program(state.num_choices, state.hidden, cfg.controller_lr)
    key, sample_key, score_key = split_key(state.key, 3)
    B = cfg.controller_batch
    n = B if max_evals is None else min(B, max_evals)
    codes, _, _ = sample(state.params, jnp.asarray(sample_key), B)
    codes = np.asarray(codes)
    scores = score_batch(score_fn, codes[:n], score_key)
    mask = np.zeros(B, np.float32)
    mask[:n] = np.isfinite(scores)
    rewards = np.zeros(B, np.float32)
    rewards[:n] = np.where(np.isfinite(scores), scores, 0.0)
    baseline, params, opt_state = float(state.baseline), state.params, state.opt_state
    if mask.any():
        batch_mean = float(rewards[mask > 0].mean())
        if int(state.cycle) == 0:
            baseline = batch_mean  # start centred rather than at 0, so the first update is not one-sided
        params, opt_state, _ = update(params, opt_state, jnp.asarray(codes), jnp.asarray((rewards - baseline) * mask),
                                      jnp.asarray(mask), jnp.float32(cfg.entropy_weight))
        baseline = cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * batch_mean
    return state.replace(params=params, opt_state=opt_state, baseline=np.asarray(baseline, np.float32), key=key,
                         cycle=np.asarray(int(state.cycle) + 1, np.int32), history=append(state.history, codes[:n], scores))


def controller_probabilities(state: ReinforceState) -> np.ndarray:
    """``[D, max_choices]`` decision probabilities along the controller's greedy path (0 past a decision's choices)."""
    _, _, probabilities = _controller_programs(state.num_choices, state.hidden)
    return np.asarray(probabilities(state.params))


def sample_architectures(state: ReinforceState, key, batch: int):
    """``(codes, log_prob, entropy)`` for ``batch`` samples from the state's controller, in one jitted call."""
    _, sample, _ = _controller_programs(state.num_choices, state.hidden)
    return jax.tree.map(np.asarray, sample(state.params, jnp.asarray(key), batch))

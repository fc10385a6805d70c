"""The project's own digits classifier: accuracy of conditional samples, and
the feature space for Fréchet distance and precision/recall on digits."""
from __future__ import annotations

import hashlib
import os

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mmd_jax.workdir import fs

FEATURE_DIM = 64


class DigitsCNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(32, (3, 3))(x))
    h = nn.relu(nn.Conv(64, (3, 3))(h))
    h = nn.avg_pool(h, (2, 2), (2, 2))
    h = nn.relu(nn.Dense(128)(h.reshape(h.shape[0], -1)))
    feats = nn.Dense(FEATURE_DIM)(h)
    return nn.Dense(10)(nn.relu(feats)), feats


def _shift(rng, x):
  """Random +-1 pixel translations: cheap augmentation for 1.4k images."""
  pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
  dx, dy = rng.integers(0, 3, size=2)
  return pad[:, dy:dy + 8, dx:dx + 8]


def train_classifier(train, steps: int, seed: int = 0, batch_size: int = 128):
  model = DigitsCNN()
  params = model.init(jax.random.PRNGKey(seed), train['x'][:1])
  tx = optax.adamw(optax.cosine_decay_schedule(2e-3, steps), weight_decay=1e-4)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, y):
    def loss_fn(p):
      logits, _ = model.apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, g = jax.value_and_grad(loss_fn)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  rng = np.random.default_rng(seed)
  n = len(train['x'])
  for i in range(steps):
    idx = rng.integers(0, n, batch_size)
    params, opt, loss = step(params, opt, _shift(rng, train['x'][idx]),
                             train['label'][idx])
    if (i + 1) % 500 == 0:
      logging.info('digits classifier step %d/%d loss=%.4f', i + 1, steps,
                   float(loss))
  return params


class DigitsClassifier:
  """Trained once per workdir and cached there."""

  def __init__(self, params):
    self.params = params
    self._apply = jax.jit(DigitsCNN().apply)

  def logits_and_features(self, x, batch_size: int = 1000):
    outs = [self._apply(self.params, jnp.asarray(x[i:i + batch_size]))
            for i in range(0, len(x), batch_size)]
    logits = np.concatenate([np.asarray(o[0]) for o in outs])
    feats = np.concatenate([np.asarray(o[1]) for o in outs])
    return logits, feats

  def accuracy(self, x, y) -> float:
    logits, _ = self.logits_and_features(x)
    return float(np.mean(np.argmax(logits, -1) == y))

  @classmethod
  def load_or_train(cls, cache_dir: str, train, test, steps: int, seed: int):
    """The classifier cached in `cache_dir`, or trained (and cached)."""
    path = os.path.join(cache_dir, 'digits_classifier.msgpack')
    template = DigitsCNN().init(jax.random.PRNGKey(0), train['x'][:1])
    if fs.exists(path):
      params = flax.serialization.from_bytes(template, fs.read_bytes(path))
      clf = cls(params)
    else:
      clf = cls(_trained(train, steps, seed))
      if jax.process_index() == 0:
        fs.makedirs(cache_dir)
        fs.write_bytes(path, flax.serialization.to_bytes(clf.params))
    clf.test_accuracy = clf.accuracy(test['x'], test['label'])
    return clf


# The classifier is a pure function of (data, steps, seed): a process that
# evaluates several workdirs on the same data (tests, sweeps) trains it once.
_TRAINED = {}


def _trained(train, steps: int, seed: int):
  x = np.ascontiguousarray(train['x'])
  y = np.ascontiguousarray(train['label'])
  key = (steps, seed, hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest())
  if key not in _TRAINED:
    logging.info('training the digits classifier (%d steps)', steps)
    _TRAINED[key] = train_classifier(train, steps, seed)
  return _TRAINED[key]

"""The plan of a run: `config.stages` as the jobs of registered methods, in
order, with the earlier jobs whose artifacts they need.

A method needing an artifact that no stage of the run publishes gets its
provider restored, not trained: a run of one distillation stage reads the
teacher of W/teacher or of `teacher.checkpoint`. A latent run is one where
a method publishing the SPACE artifact (an autoencoder) is in the stages,
or names a trained one to import, and some method trains in the space.
"""
from __future__ import annotations

import dataclasses

from mmd_jax import plugins as registry
from mmd_jax.evaluation.train_seeds import SEED_SUFFIX
from mmd_jax.run.checks import ConfigError, need
from mmd_jax.plugins.base import RUN_KEYS, SPACE, Job, Method

EVALUATE = 'evaluate'


class SectionError(ConfigError):
  """A method read a config key outside its sections."""


class SectionView:
  """A method's view of the config: its own sections and the run-level
  keys. Reading any other key is a `SectionError` that names it: a method
  that needs another section's value must get it through the denoiser
  spec, an artifact, or a key of its own."""

  def __init__(self, config, method: str, sections):
    self._config = config
    self._method = method
    self._keys = tuple(sections) + RUN_KEYS

  def _check(self, name):
    if name not in self._keys:
      raise SectionError(
          f'{self._method} reads config.{name}, outside its sections '
          f'{tuple(k for k in self._keys if k not in RUN_KEYS)} and the '
          f'run-level keys')

  def __getattr__(self, name):
    if name.startswith('_'):
      raise AttributeError(name)
    self._check(name)
    return self._config[name]

  def __getitem__(self, name):
    self._check(name)
    return self._config[name]

  def __contains__(self, name):
    return name in self._keys and name in self._config

  def get(self, name, default=None):
    """The section, or `default` when this config has none (a config.json
    from an older version)."""
    self._check(name)
    return self._config.get(name, default)


def view(config, method: Method) -> SectionView:
  return SectionView(config, method.name, method.sections)


@dataclasses.dataclass
class PlannedJob:
  """One job of the plan, with its method and config view. `train`:
  trained here (in config.stages and not imported); otherwise only
  restored."""
  method: Method
  cfg: SectionView
  job: Job
  train: bool


@dataclasses.dataclass
class Plan:
  items: list          # PlannedJobs and EVALUATE, in run order
  latent: bool         # the diffusion models live in a published space
  config: object

  @property
  def jobs(self) -> list:
    """The PlannedJobs, in run order."""
    return [i for i in self.items if i is not EVALUATE]

  @property
  def jobs_by_name(self) -> dict:
    return {p.job.name: p.job for p in self.jobs}

  @property
  def methods(self) -> list:
    """Each planned method once, in run order."""
    out = []
    for p in self.jobs:
      if p.method not in out:
        out.append(p.method)
    return out

  def view_of(self, method: Method) -> SectionView:
    return view(self.config, method)


def _order(names) -> list:
  """[(method, in_stages) or EVALUATE] with providers restored before the
  first consumer that needs them."""
  order, planned = [], set()

  def provide(artifact, consumer):
    p = registry.provider_of(artifact)
    need(p is not None, 'stages',
         f'{consumer!r} needs {artifact!r}, which no method publishes')
    if p.name in planned:
      return
    need(p.name not in names, 'stages',
         f"{consumer!r} needs the {artifact} of {p.name!r}; put {p.name!r} "
         'before it')
    for a in p.needs:
      provide(a, p.name)
    order.append((p, False))
    planned.add(p.name)

  for name in names:
    if name == EVALUATE:
      order.append(EVALUATE)
      continue
    m = registry.get(name)
    for a in m.needs:
      provide(a, name)
    order.append((m, True))
    planned.add(name)
  return order


def _imported(method: Method, cfg) -> bool:
  try:
    return any(j.source for j in method.jobs(cfg))
  except (KeyError, AttributeError):   # an older config without its section
    return False


def make_plan(config, data=None) -> Plan:
  """Checks config.stages and orders the jobs. With `data` (the run's
  DataShape) every planned method also validates its own sections."""
  names = tuple(config.stages)
  need(len(names) > 0, 'stages', 'is empty')
  known = registry.names() + (EVALUATE,)
  for s in names:
    need(s in known, 'stages', f'unknown stage {s!r}; known: {known}')
  need(len(set(names)) == len(names), 'stages',
       f'names a stage twice: {names}')
  order = _order(names)
  methods = [o[0] for o in order if o is not EVALUATE]
  views = {m.name: view(config, m) for m in methods}

  latent = False
  space = registry.provider_of(SPACE)
  diffusion = [m for m in methods if m.in_space]
  if space is not None and diffusion:
    if space.name in names:
      first = methods.index(diffusion[0])
      need(methods.index(space) < first, 'stages',
           f'{diffusion[0].name!r} trains in the space of {space.name!r}; '
           f'put {space.name!r} before it')
      latent = True
    elif _imported(space, view(config, space)):
      order.insert(0, (space, False))
      views[space.name] = view(config, space)
      latent = True
  if data is not None:
    spaced = (space.space_data(views[space.name], data) if latent else None
              ) or data
    for m, _ in (o for o in order if o is not EVALUATE):
      m.validate(views[m.name], spaced if m.in_space else data)
    _check_unused_sections(config, views, data)

  # Copies train seed by seed (every method's copy 0, then copy 1, ...):
  # a run stopped early has whole boards.
  copies = train_seeds(config)
  items, later = [], {}
  flush = lambda: sum((later.pop(s) for s in sorted(later)), [])
  for o in order:
    if o is EVALUATE:
      items += flush() + [EVALUATE]
      continue
    m, in_stages = o
    jobs = m.jobs(views[m.name])
    train = [in_stages and not job.source for job in jobs]
    if copies > 1 and m.replicable and all(train):
      for seed in range(copies):
        planned = [PlannedJob(m, views[m.name], j, True)
                   for j in seeded(jobs, seed)]
        (later.setdefault(seed, []) if seed else items).extend(planned)
      continue
    items += [PlannedJob(m, views[m.name], j, t) for j, t in zip(jobs, train)]
  items += flush()
  _check_job_needs(items)
  return Plan(items, latent, config)


def train_seeds(config) -> int:
  n = config.get('train_seeds', 1)
  need(isinstance(n, int) and not isinstance(n, bool) and n >= 1,
       'train_seeds', f'must be an integer >= 1 (got {n!r})')
  return n


def seeded(jobs: list, seed: int) -> list:
  """Training seed `seed` of a method's jobs: seed 0 is the jobs as they
  are (the directory, key and data order of a one-copy run); seed i > 0
  renames each directory `<name>_seed<i>` (its key comes from the name) and
  shifts its data order. Job-scoped needs follow the renaming, so a chain
  of rounds is copied whole."""
  if seed == 0:
    return [dataclasses.replace(j, train_seed=0,
                                meta={**j.meta, 'train_seed': 0})
            for j in jobs]
  names = {j.name: f'{j.name}{SEED_SUFFIX}{seed}' for j in jobs}

  def rename(artifact):
    head, _, tail = artifact.partition('/')
    return f'{names[head]}/{tail}' if head in names else artifact
  return [dataclasses.replace(
      j, name=names[j.name], train_seed=seed,
      data_salt=j.data_salt + DATA_SALT_PER_SEED * seed,
      needs=tuple(rename(a) for a in j.needs),
      meta={**j.meta, 'train_seed': seed}) for j in jobs]


# Data orders of different training seeds never coincide with another
# job's (salts below this are the methods' own).
DATA_SALT_PER_SEED = 1000


def _check_unused_sections(config, views, data):
  """The methods no stage runs still check their keys' types and ranges:
  a bad value the run does not read today is refused, not kept in
  config.json for a later run to trip over."""
  for m in registry.methods():
    if m.name not in views and all(s in config for s in m.sections):
      m.validate(view(config, m), data, used=False)


def _check_job_needs(items):
  """A job-scoped artifact ('<job name>/<what>') comes from an earlier job."""
  seen = set()
  for item in items:
    if item is EVALUATE:
      continue
    for need_ in item.job.needs:
      if need_.split('/')[0] not in seen:
        raise ConfigError(
            f'stages: {item.job.name!r} needs {need_!r}, which no earlier '
            f'job of the run trains or restores ({item.job.method} must list '
            'its jobs in order)')
    seen.add(item.job.name)


def validate_methods(config, names, data):
  """Each named method's own checks, without a plan (bench)."""
  for name in names:
    m = registry.get(name)
    m.validate(view(config, m), data)

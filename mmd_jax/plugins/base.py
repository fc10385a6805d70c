"""The method interface: everything the runner, evaluation, `sample`,
`bench` and `describe` know about a training method.

A method (the teacher, a distillation algorithm, the VAE) is a `Method`
subclass registered in `mmd_jax.plugins`, beside its pure step module in
`mmd_jax.methods`. It turns its own config sections into `Job`s, one per
stage directory, and binds each job once (`bind`) into a `Bound`: the
loop's init and step, its frozen inputs, how it samples, what it publishes
for later jobs, its report rows and its preview.

Artifacts are what jobs publish, by name:

  'teacher_params'         the teacher's sampling parameters
  'teacher_frozen_dtype'   the dtype a student keeps its frozen teacher in
  'teacher_second_moment'  Adam's second moment of the teacher
                           (`SecondMoment`, estimated from fresh gradients
                           when the teacher has none, on first use)
  SPACE ('space')          the data space the diffusion models live in (a
                           VAE's latents); absent: the data themselves
  '<job name>/<what>'      a job's own output for a later job of the same
                           method (a progressive round's student)

A method's artifacts are its `provides` (and the job-scoped names its jobs'
`needs` ask for). `Bound.publish(state)` must accept an abstract state
(ShapeDtypeStruct leaves, from `jax.eval_shape` of `init`) and then return
the artifacts' shapes: describe, bench and restoring consumers use those.

A method reads only `cfg`: a view of its own sections plus the run-level
keys (`RUN_KEYS`). Everything about the data and the network comes in the
`Context`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

RUN_KEYS = ('seed', 'mesh', 'checkpoint', 'log', 'grad_accum_steps',
            'max_nonfinite_steps', 'matmul_precision')

# The artifact that sets the space of the methods trained `in_space`.
SPACE = 'space'


@dataclasses.dataclass(frozen=True)
class Job:
  """One trained (or imported) stage directory of a method.

  `setting` and `meta` go into stage.json; resuming, skipping and
  evaluating refuse a directory whose recorded `setting` (or `meta` value)
  differs from the job's.
  """
  method: str                  # the registry name (a config.stages entry)
  name: str                    # its directory under the workdir
  model: str                   # report rows' `model`
  steps: Optional[int]         # a student's k; None for a many-step model
  num_steps: int               # training steps
  batch_size: int
  batch_key: str               # the config key that sets batch_size
  data_salt: int = 0           # offsets the data order's seed
  micro_batches: int = 1       # gradient accumulation inside the step
  setting: Optional[dict] = None
  meta: dict = dataclasses.field(default_factory=dict)
  # Imported rather than trained: a file (materialised as the job's
  # directory) or a stage directory elsewhere (`stage_dir`, read only).
  source: str = ''
  source_key: str = ''         # the config key that names `source`
  stage_dir: str = ''
  options: tuple = ()          # method-private, e.g. EMD's overrides
  # Job-scoped artifacts of earlier jobs ('<job name>/<what>') it needs
  # beside its method's `needs`: a progressive round starts from the
  # round before it. Its report cost includes theirs.
  needs: tuple = ()
  # Teacher network evaluations per training example (a VJP or JVP counts
  # as two): the report row's cost.teacher_evals.
  teacher_evals_per_example: float = 0.0
  # Which of config.train_seeds independent copies this is (run/plan.py
  # makes them); None: the run trains one copy.
  train_seed: Optional[int] = None


@dataclasses.dataclass
class Bound:
  """One job, bound once: everything the runner, evaluation, bench and
  describe do with it."""
  init: Callable[[Any, Any, Any], Any]    # (key, batch, frozen) -> state
  # (state, batch, key) -> (state, metrics)
  step: Callable[[Any, Any, Any], Any]
  # Read-only state fields (teacher params, a preconditioner): passed to
  # `init` as jit arguments, saved once per directory, not checkpointed.
  frozen: Optional[dict] = None
  sampling: Optional['Sampling'] = None
  # state (concrete or abstract) -> {artifact: value (or its shapes)}
  publish: Optional[Callable[[Any], dict]] = None
  # (state, seed) -> (report rows scored by the method itself,
  # {title: picture file under the workdir})
  report: Optional[Callable[[Any, int], tuple]] = None
  # (state, path): a picture replacing the runner's samples picture
  preview: Optional[Callable[[Any, str], None]] = None
  # An imported job: its fresh state -> the state with the source's
  # contents in place.
  load: Optional[Callable[[Any], Any]] = None
  report_setting: Optional[dict] = None   # the report row's `setting`
  bench_name: str = ''                    # bench's row name; '' = method's


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How a trained job draws samples from `state.sampling_params`.

  `draw(params, key, shape, labels, steps, sampler, guidance)` is pure and
  jittable, and compares by value: jobs that sample alike share one
  compiled program. `steps` is a student's own k; None marks a many-step
  model, which evaluation samples at every `eval.teacher_steps` with every
  `eval.samplers` and `eval.guidance`. `any_steps` says whether `draw`
  honours other step counts (`mmd_jax.sample --steps`).
  """
  draw: Callable
  steps: Optional[int]
  any_steps: bool = True
  # A student that evaluation scores at each of these k as its own row (a
  # consistency model samples at any k); (): at `steps` only.
  report_steps: tuple = ()


class TimeSpaced:
  """A frozen-dataclass sampler with a `time_powers` field, ((k, power),
  ...): its time grid's spacing at those k (numerics/sampling.py's
  `time_grid`), 1 elsewhere. `TIME_POWERS_KEY` names the config key that
  sets it (tune_sampler prints it)."""
  TIME_POWERS_KEY = ''

  def power_at(self, k: int) -> float:
    return dict(self.time_powers).get(k, 1.0)

  def with_time_power(self, k: int, power: float):
    return dataclasses.replace(self, time_powers=tuple(
        {**dict(self.time_powers), k: power}.items()))


@dataclasses.dataclass(frozen=True)
class SpecSampler(TimeSpaced):
  """Algorithm 1 (or DDIM) with the denoiser the spec reads."""
  spec: Any
  negative: Any = None   # a function of the batch size: the null half
  time_powers: tuple = ()   # TimeSpaced; the runner applies the key's
  TIME_POWERS_KEY = 'eval.time_powers'

  def __call__(self, params, key, shape, labels, steps, sampler='ancestral',
               guidance=0.0):
    null = None if self.negative is None else self.negative(shape[0])
    return self.spec.sample(params, key, shape, steps, labels=labels,
                            guidance=guidance, sampler=sampler, null=null,
                            time_power=self.power_at(steps))

  def with_negative(self, negative):
    """This sampler with `negative(batch)` in place of the null
    condition under guidance (a negative caption)."""
    return dataclasses.replace(self, negative=negative)


@dataclasses.dataclass(frozen=True)
class Network:
  """The run's denoiser when a method defines it rather than config.model
  (a teacher imported from another framework): the module, how to read
  its output, whether it takes class labels, and the schedule it was
  trained on (None: config.diffusion's). `null_label`: whether it embeds a
  label past the data's classes, the unconditional input that
  classifier-free guidance needs."""
  module: Any
  parameterization: str
  conditional: bool
  schedule: Any = None
  null_label: bool = True


@dataclasses.dataclass
class Context:
  """What a method sees of the run besides its config view.

  `data` is the run's data as stored (points, pixels); `dataset` is what
  the diffusion models train on: `data` through the run's space (the same
  object unless the run is latent). Both are `data.Dataset`s, or
  `data.DataShape`s where nothing is loaded (describe, bench).
  """
  workdir: str
  mesh: Any
  data: Any
  dataset: Any
  spec: Any                        # denoiser.DenoiserSpec on `dataset`
  space: Any                       # .decode(samples) -> data space
  # (dataset, global batch, seed salt) -> data.batches.BatchStream
  stream: Callable[[Any, int, int], Any]


class Method:
  """Base class; subclasses set the class attributes and override what
  applies. See the module docstring."""
  name: str = ''
  sections: tuple = ()     # config sections it reads
  needs: tuple = ()        # artifacts it takes from earlier jobs
  provides: tuple = ()     # artifacts it publishes
  in_space: bool = True    # trains in the run's space; False: on the data
  benched: bool = True     # in `mmd_jax.bench`'s default set
  # Reads the data's examples when it trains; False: noise and conditions
  # only (data-free: a prompts-only caption file will do).
  needs_examples: bool = True
  networks: tuple = ()     # parameter sets it trains, each one denoiser

  @property
  def replicable(self) -> bool:
    """Whether config.train_seeds copies its jobs: a method whose jobs
    publish nothing other methods read (a student, a generator), so that
    each copy is a leaf of the run."""
    return not self.provides

  def validate(self, cfg, data, used: bool = True) -> None:
    """One-line ConfigErrors for bad values of its sections. `data` is the
    run's `DataShape`. `used=False`: no stage of the run is this method's,
    so only its keys' own types and ranges are checked (not how they fit
    the data, the batch split or files on disk): a typo in a section no
    stage reads is still refused."""

  def space_data(self, cfg, data):
    """A SPACE provider: the `DataShape` the in-space methods will see, when
    it is known before training (a diffusers VAE's image latents), so that
    they validate against it; None: they validate against `data`."""
    return None

  def network(self, cfg, data, workdir: str) -> Optional[Network]:
    """The run's network, when this method brings one (an imported
    teacher); None: the one config.model describes."""
    return None

  def jobs(self, cfg) -> list:
    raise NotImplementedError

  def bind(self, job: Job, cfg, ctx: Context, artifacts: dict) -> Bound:
    """The job, bound. `artifacts` holds the method's `needs` and the job's
    own; their values are abstract (ShapeDtypeStruct trees) when the job
    is only restored or described."""
    raise NotImplementedError

  def network_sizes(self, cfg, ctx: Context) -> dict:
    """{network name: parameter count} for describe."""
    import jax
    import jax.numpy as jnp
    x = jnp.zeros((1,) + tuple(ctx.dataset.example_shape))
    n = sum(int(l.size) for l in jax.tree.leaves(jax.eval_shape(
        ctx.spec.init_params, jax.random.PRNGKey(0), x)))
    return {net: n for net in self.networks}

  def job_for(self, cfg, name: str, meta: dict) -> Job:
    """The job of an existing directory `name` (mmd_jax.sample)."""
    jobs = self.jobs(cfg)
    for job in jobs:
      if job.name == name:
        return job
    if len(jobs) == 1:
      return jobs[0]
    raise ValueError(f'{self.name} has no job {name!r}; it has '
                     f'{[j.name for j in jobs]}')


def is_abstract(tree) -> bool:
  import jax
  leaves = jax.tree.leaves(tree)
  return bool(leaves) and isinstance(leaves[0], jax.ShapeDtypeStruct)


def maybe_abstract(fn, *trees):
  """fn(*trees), or its shapes when the trees are abstract."""
  import jax
  if is_abstract(trees):
    return jax.eval_shape(fn, *trees)
  return fn(*trees)


def with_frozen_teacher_in(init, dtype: str):
  """`init`, whose state's frozen `teacher_params` are stored in `dtype`
  (the teacher's 'teacher_frozen_dtype'). The trained networks were copied
  from the teacher before this cast, so they stay float32."""
  if dtype == 'float32':
    return init

  def cast(key, batch, frozen):
    import jax
    import jax.numpy as jnp
    state = init(key, batch, frozen)
    return state.replace(teacher_params=jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
        else x, state.teacher_params))
  return cast

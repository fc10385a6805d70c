"""Teachers in diffusers' format: a `UNet2DModel` or `UNet2DConditionModel`
directory (config.json + diffusion_pytorch_model.safetensors), or a
pipeline directory (model_index.json, unet/, scheduler/, vae/: Stable
Diffusion's layout) whose unet/ is read, as an mmd_jax denoiser. A
UNet2DConditionModel takes the run's caption condition (data/captions.py)
as its encoder_hidden_states and mask; its text encoder is not ported
(tools/encode_captions.py writes the captions file from it).

How the network was trained decides how it is read (docs/ALGORITHMS.md §8):
- `ddpm`: diffusers' DDPMScheduler, a discrete schedule of betas whose
  network takes the step index and predicts eps (or v, or x). The betas and
  the prediction come from a `scheduler_config.json` beside the model (or
  in `../scheduler/`, a pipeline's layout), else diffusers' defaults
  (linear 1e-4 to 0.02 over 1000 steps, eps).
- `edm`: Karras et al.'s preconditioning around the UNet (a
  KarrasEDMScheduler's or EDMEulerScheduler's model), with the scheduler's
  sigma_data (else `teacher.sigma_data`) and its noise input, EDM's
  `ln(sigma) / 4` (precondition_type 'edm') or the consistency-models
  code's `250 ln(sigma)` ('cm_edm'); x-prediction; the run samples on
  config.diffusion's schedule (set it to edm).
`teacher.noise_schedule` (auto | ddpm | edm) and `teacher.prediction_type`
(auto | epsilon | v_prediction | sample) override what the files say.

An import copies config.json and the resolved settings (import.json) into
W/teacher/diffusers/, so the workdir reads its teacher without the source.
"""
from __future__ import annotations

import json
import os

from mmd_jax.numerics import diffusion
from mmd_jax.workdir import fs
from mmd_jax.run.checks import ConfigError, is_describing
from mmd_jax.models import diffusers_unet as du
from mmd_jax.models import imported

SCHEDULES = ('auto', 'ddpm', 'edm')
PREDICTIONS = {'epsilon': 'eps', 'v_prediction': 'v', 'sample': 'x'}
EDM_NOISE_SCALES = {'edm': 0.25, 'cm_edm': 250.0}
COPY_DIR = 'diffusers'   # under the teacher's stage directory


PIPELINE_INDEX = 'model_index.json'


def is_pipeline(path: str) -> bool:
  """A diffusers pipeline directory (model_index.json beside unet/...)."""
  return fs.isfile(os.path.join(path, PIPELINE_INDEX))


def unet_dir(path: str) -> str:
  """The model directory to read: a pipeline's unet/, else `path`."""
  return os.path.join(path, 'unet') if is_pipeline(path) else path


def is_diffusers_dir(path: str) -> bool:
  """A directory holding a diffusers model, not an mmd_jax stage."""
  if is_pipeline(path) and not fs.exists(os.path.join(path, 'stage.json')):
    return True
  cfg = os.path.join(path, 'config.json')
  if not fs.isdir(path) or fs.exists(
      os.path.join(path, 'stage.json')) or not fs.isfile(cfg):
    return False
  try:
    d = json.loads(fs.read_text(cfg))
  except (OSError, ValueError):
    # No stage.json and a damaged config.json: a diffusers model whose
    # import names the file (not "no stage.json").
    return True
  return isinstance(d, dict) and ('_class_name' in d or
                                  'down_block_types' in d)


def _scheduler_config(model_dir: str) -> dict:
  for p in (os.path.join(model_dir, 'scheduler_config.json'),
            os.path.join(os.path.dirname(fs.absolute(model_dir)),
                         'scheduler', 'scheduler_config.json')):
    if fs.isfile(p):
      return du.read_json(p)
  return {}


def settings(model_dir: str, noise_schedule: str = 'auto',
             prediction_type: str = 'auto') -> dict:
  """How to read the network: {'schedule': 'ddpm'|'edm', betas...,
  'prediction_type'}; import.json's when the directory is an import copy."""
  saved = os.path.join(model_dir, 'import.json')
  if fs.isfile(saved):
    return du.read_json(saved)
  sched = _scheduler_config(model_dir)
  kind = noise_schedule
  if kind == 'auto':
    edm = 'sigma_max' in sched or 'EDM' in sched.get('_class_name', '')
    kind = 'edm' if edm else 'ddpm'
  pred = prediction_type if prediction_type != 'auto' else sched.get(
      'prediction_type', 'sample' if kind == 'edm' else 'epsilon')
  out = {'schedule': kind, 'prediction_type': pred}
  if kind == 'ddpm':
    out.update(beta_schedule=sched.get('beta_schedule', 'linear'),
               beta_start=float(sched.get('beta_start', 1e-4)),
               beta_end=float(sched.get('beta_end', 0.02)),
               # 'timesteps' in the oldest (GaussianDDPMScheduler) configs.
               num_train_timesteps=int(sched.get(
                   'num_train_timesteps', sched.get('timesteps', 1000))))
  else:
    # KarrasEDMScheduler calls the raw network's output 'edm' or 'sample'.
    out['prediction_type'] = 'sample' if pred == 'edm' else pred
    out.update(precondition_type=sched.get('precondition_type', 'edm'),
               sigma_data=sched.get('sigma_data'))
  return out


def _check_settings(model_dir, noise_schedule, prediction_type, fail):
  """The schedule and prediction the network is read with."""
  try:
    s = settings(model_dir, noise_schedule, prediction_type)
  except du.DiffusersImportError as e:
    fail(str(e))
  sched = _scheduler_config(model_dir)
  for key, default in (('rescale_betas_zero_snr', False),
                       ('trained_betas', None)):
    if sched.get(key, default) not in (default, []):
      fail(f'scheduler_config.json: {key}={sched[key]!r} is not supported '
           f'(the schedule is rebuilt from beta_schedule/start/end)')
  if s['prediction_type'] not in PREDICTIONS:
    fail(f"prediction_type {s['prediction_type']!r} is not one of "
         f'{tuple(PREDICTIONS)}')
  if s['schedule'] == 'edm':
    if s['prediction_type'] != 'sample':
      fail(f"an EDM model's output is read through EDM's preconditioning; "
           f"prediction_type {s['prediction_type']!r} is not supported")
    if s['precondition_type'] not in EDM_NOISE_SCALES:
      fail(f"precondition_type {s['precondition_type']!r} is not one of "
           f'{tuple(EDM_NOISE_SCALES)}')
  if s['schedule'] == 'ddpm' and s['beta_schedule'] not in \
      diffusion.DDPM_BETA_SCHEDULES:
    fail(f"beta_schedule {s['beta_schedule']!r} is not one of "
         f'{diffusion.DDPM_BETA_SCHEDULES}')


def check(model_dir: str, noise_schedule: str, prediction_type: str, data):
  """One-line ConfigErrors, before anything is built: the model must be
  one the port builds, and fit the run's data."""
  def fail(msg):
    raise ConfigError(f'config.teacher.checkpoint: {msg}')
  if is_pipeline(model_dir) and not fs.isdir(unet_dir(model_dir)):
    fail(f'{model_dir} is a diffusers pipeline without unet/')
  model_dir = unet_dir(model_dir)
  try:
    c = du.read_any_config(model_dir)
  except du.DiffusersImportError as e:
    fail(str(e))
  # Describing reads config.json only (configs/sd15 has no weights).
  if not fs.isfile(os.path.join(model_dir, du.WEIGHTS_FILE)) and \
      not is_describing():
    fail(f'{model_dir} has no {du.WEIGHTS_FILE} (the safetensors weights)')
  _check_settings(model_dir, noise_schedule, prediction_type, fail)
  shape = tuple(data.example_shape)
  if len(shape) != 3:
    fail(f'a diffusers UNet takes images; this run has examples of shape '
         f'{shape}')
  size = c.sample_size
  size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
  if c.in_channels != shape[2] or c.out_channels != shape[2] or (
      c.sample_size is not None and size != shape[:2]):
    fail(f'the model takes {size} x {c.in_channels} samples '
         f'(out_channels {c.out_channels}); this run has {data.name} with '
         f'examples of shape {shape}')
  if isinstance(c, du.CondUNetConfig):
    _check_captions(c, data, fail)
    return
  if c.num_class_embeds is not None and c.num_class_embeds < \
      data.num_classes:
    fail(f'the model embeds {c.num_class_embeds} classes; {data.name} has '
         f'{data.num_classes}')
  if (c.num_class_embeds is not None or c.class_embed_type) and \
      not data.num_classes:
    fail(f'the model is class-conditional; {data.name} has no labels')


def _check_captions(c, data, fail):
  sig = getattr(data, 'caption_signature', None)
  if sig is None:
    fail(f'a UNet2DConditionModel takes captions; {data.name} has none '
         '(give a captions file: data.name=points, data.path=F.npz)')
  if sig.dim != c.context_dim:
    fail(f'the model attends to {c.context_dim}-wide caption embeddings '
         f'(cross_attention_dim); the captions of {data.name} are '
         f'{sig.dim} wide')
  if c.time_cond_proj_dim is not None:
    fail('time_cond_proj_dim: a guidance-embedded (LCM-style) UNet needs '
         'a guidance input this import does not give')
  if c.dropout:
    fail(f'dropout={c.dropout}: the port has no dropout layers; students '
         'copied from it would train without them')


def network(model_dir: str, noise_schedule: str, prediction_type: str,
            sigma_data: float):
  """(Flax denoiser module, parameterization, conditional, schedule or
  None) of the model (or pipeline) directory."""
  model_dir = unet_dir(model_dir)
  c = du.read_any_config(model_dir)
  s = settings(model_dir, noise_schedule, prediction_type)
  if isinstance(c, du.CondUNetConfig):
    unet, conditional = du.UNet2DCondition(c), True
  else:
    unet = du.UNet2D(c)
    conditional = c.num_class_embeds is not None or bool(c.class_embed_type)
  if s['schedule'] == 'edm':
    edm = imported.EDMDenoiser(
        unet, s.get('sigma_data') or sigma_data,
        EDM_NOISE_SCALES[s.get('precondition_type', 'edm')], conditional)
    return edm, 'x', conditional, None
  sched = diffusion.Schedule(
      'ddpm', beta_schedule=s['beta_schedule'], beta_start=s['beta_start'],
      beta_end=s['beta_end'], num_timesteps=s['num_train_timesteps'])
  return (imported.DDPMDenoiser(unet, sched, conditional),
          PREDICTIONS[s['prediction_type']], conditional, sched)


def has_null_label(model_dir: str, num_classes: int) -> bool:
  """Whether the model embeds a label past the data's classes. Label
  index `num_classes` is our unconditional input; a diffusers model
  trained without label dropout has no such row (and a 'timestep' class
  embedding none that was trained)."""
  c = du.read_any_config(unet_dir(model_dir))
  if isinstance(c, du.CondUNetConfig):
    return True   # captions: the table's null_emb decides (denoiser.py)
  return c.num_class_embeds is not None and c.num_class_embeds > num_classes


def load_params(model_dir: str):
  """The weights as the denoiser module's params ({'params': {'net':
  ...}})."""
  _, params = du.from_pretrained(unet_dir(model_dir))
  return {'params': {'net': params['params']}}


def keep_copy(model_dir: str, stage_dir: str, noise_schedule: str,
              prediction_type: str):
  """config.json and the resolved settings, beside the imported weights."""
  d = os.path.join(stage_dir, COPY_DIR)
  fs.makedirs(d)
  model_dir = unet_dir(model_dir)
  fs.write_text(os.path.join(d, 'config.json'),
                fs.read_text(os.path.join(model_dir, 'config.json')))
  fs.write_text(os.path.join(d, 'import.json'), json.dumps(dict(
      settings(model_dir, noise_schedule, prediction_type),
      imported_from=fs.absolute(model_dir)), indent=2))

"""Shared defaults. Every value a user may change lives here, not in code.

Each config file calls `get_base_config()` and overrides what it needs.
"""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Independent copies of every student and generator job (run/plan.py):
  # copy i > 0 trains in <stage>_seed<i> with its own key and data order,
  # and report rows give the mean and std over the copies (evaluation
  # seeds nested). The teacher and the VAE are trained once.
  c.train_seeds = 1
  c.stages = ('teacher', 'evaluate')

  c.data = ml_collections.ConfigDict()
  c.data.name = 'toy2d'  # toy2d | points | digits | cifar10 | imagenet64 | imagenet128
  c.data.path = ''               # for points: an (N, D) .npy file
  # A prompts-only caption file (no array x): the shape of one example the
  # imported teacher samples, e.g. (64, 64, 4); () otherwise.
  c.data.example_shape = ()
  c.data.toy_name = 'asymmetric_mixture'
  c.data.num_train = 100_000     # toy2d: size of the fixed training set
  c.data.seed = 0
  c.data.tfds_data_dir = ''      # image data: '' = tfds's default data_dir
  c.data.random_flip = True      # image data: random horizontal flips

  c.model = ml_collections.ConfigDict()
  c.model.name = 'mlp'           # mlp | unet | uvit
  c.model.width = 256            # mlp
  c.model.num_blocks = 3         # mlp
  c.model.block_conditioning = True  # mlp: noise/label embedding in every block
  c.model.channels = 32          # unet, uvit: channels * channel_mult per level
  c.model.channel_mult = (1, 2)  # unet, uvit
  c.model.num_res_blocks = 1     # unet, uvit (per level)
  c.model.attn_resolutions = (4,)  # unet
  c.model.num_heads = 1          # unet, uvit
  c.model.patch_size = 1         # uvit: space-to-depth before the U
  c.model.transformer_width = 256  # uvit: the transformer at the lowest level
  c.model.transformer_depth = 2  # uvit
  c.model.mlp_ratio = 4          # uvit
  c.model.dtype = 'auto'         # uvit compute: auto (bf16 on GPU/TPU) | float32 | bfloat16
  c.model.remat = False          # uvit: rematerialise blocks (jax.checkpoint)
  c.model.dropout = 0.0
  c.model.parameterization = 'v'  # v | eps | x
  c.model.conditional = False    # class-conditional (labelled data only)

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = 'cosine'  # cosine | shifted_cosine | edm | shifted_edm
  c.diffusion.logsnr_min = -15.0
  c.diffusion.logsnr_max = 15.0
  c.diffusion.resolution = 64      # shifted_cosine only
  c.diffusion.base_resolution = 64

  c.teacher = ml_collections.ConfigDict()
  c.teacher.num_train_steps = 20_000
  c.teacher.batch_size = 512
  c.teacher.learning_rate = 1e-3
  c.teacher.warmup_steps = 500
  c.teacher.lr_decay = False
  c.teacher.grad_clip = 1.0
  c.teacher.b1 = 0.9
  c.teacher.b2 = 0.99
  c.teacher.adam_eps = 1e-8
  c.teacher.ema_decay = 0.999
  c.teacher.loss_weight = 'v'    # v | edm | snr | flat
  c.teacher.sigma_data = 0.5
  c.teacher.label_dropout = 0.1  # CFG training (conditional models only)
  c.teacher.stratified_t = True  # low-discrepancy t per batch (VDM)
  # The frozen teacher copy inside every distillation state: float32, or
  # bfloat16 to halve its memory (it is upcast where it is used; under
  # FSDP it is sharded like the trained parameters).
  c.teacher.frozen_dtype = 'float32'
  # Train here when empty; else a teacher stage directory, a .npz/.msgpack
  # parameter file of config.model's network, or a diffusers UNet2DModel
  # directory (config.json + diffusion_pytorch_model.safetensors).
  c.teacher.checkpoint = ''
  # A teacher stage directory whose training did not finish is refused
  # unless this is True (its step is logged).
  c.teacher.allow_unfinished = False
  # A diffusers teacher: how it was trained (auto: from a
  # scheduler_config.json beside it, else DDPM's defaults), and what it
  # predicts (auto: the scheduler's, else epsilon; edm: sample).
  c.teacher.noise_schedule = 'auto'   # auto | ddpm | edm
  c.teacher.prediction_type = 'auto'  # auto | epsilon | v_prediction | sample

  c.distill = ml_collections.ConfigDict()
  c.distill.num_train_steps = 4000
  c.distill.sampling_steps = (1, 2, 4, 8)  # one student per k
  c.distill.batch_size = 512       # mm_parameter splits it into batches A, B
  # The paper's optimiser: Adam(b1=0, b2=0.99, eps=1e-12), clip 1,
  # warm-up then linear decay to 0.
  c.distill.learning_rate = 1e-4
  c.distill.warmup_steps = 1000
  c.distill.grad_clip = 1.0
  c.distill.lr_decay = True        # False: constant after the warm-up
  # mm_alternating only (Algorithm 2 leaves them open): auxiliary-model
  # updates per student update, and the decay of a bias-corrected EMA of
  # the student that samples (0: the student itself).
  c.distill.aux_updates = 1
  c.distill.student_ema = 0.0
  # w(s) for k > 2: v | edm | flat | snr | dmd. flat [measured, issue 19]:
  # against v (1 + SNR), over 2-4 training seeds on one teacher each,
  # digits mm_alternating k = 4 fd 9.9 against 13.9 (paired -4.0, 95%
  # [-6.1, -1.9]) and toy2d k = 8 ED 0.0015 +- 0.0008 against 0.0038 +-
  # 0.0031 (worst seed 0.17x the teacher's 8 steps against 0.59x);
  # docs/results/mm_spread. One weighting at every k.
  c.distill.weighting = 'flat'
  c.distill.weighting_small_k = 'flat'  # w(s) for k <= 2 (paper: flat or dmd)
  c.distill.renoise = 'conditional'     # conditional | marginal (ablation)
  # s ~ U[0, 1] ('full'; t = min(s + delta, 1) puts part of the batch at
  # t = 1, where sampling starts) or U[0, 1-1/k] ('grid': the clip never
  # binds; 'auto': grid for k >= 2, the old default). full [measured]: at
  # k = 2 it beat grid on toy2d (ED 0.083 against 0.15) and digits (fd 11.8
  # against 17.4), and tied at k = 4, 8 (README). k = 1 is always full.
  c.distill.s_range = 'full'
  # Sampling only, one key per MM algorithm: ((k, power), ...), the time
  # grid t_i = (1 - i/k)^power at those k (1: uniform, the paper's).
  # Students train on jumps anywhere in [0, 1]; tune_sampler chooses.
  c.distill.alternating_time_powers = ()
  c.distill.parameter_time_powers = ()
  # k = 1: the student as a one-step generator, the network read at log-SNR
  # k1_logsnr on pure noise (EMD's form, lambda* = 0), t = 1 and s over
  # [0, 1]. False: the network at t = 1 (log-SNR logsnr_min), where it has
  # learned to ignore its input and the students stay collapsed.
  c.distill.k1_generator = True
  c.distill.k1_logsnr = 0.0
  c.distill.guidance = 0.0         # CFG weight inside the teacher only
  c.distill.precond_eps = 1e-8     # Lambda = 1 / (sqrt(v_hat) + eps)
  c.distill.precond_estimate_steps = 100  # when the teacher has no Adam state

  # Progressive distillation (docs/ALGORITHMS.md §4b): rounds halve the
  # teacher's DDIM steps from start_steps down to the smallest k of
  # distill.sampling_steps (64 -> 32, 16, 8, 4, 2, 1), each student
  # starting from its teacher; it reads distill.{sampling_steps,
  # batch_size, num_train_steps, guidance}. [paper]: Adam, the rate
  # annealed linearly to 0 in every round, x-space loss with the
  # truncated-SNR weight, equal updates per round, a many-step start (the
  # paper: 1024-8192). 64 [ours, measured]: on toy2d at one budget, 6 rounds
  # from the teacher's 64-step DDIM beat 4 rounds from its 16-step DDIM at
  # every k (docs/results.md, the toy2d leaderboard).
  c.progressive = ml_collections.ConfigDict()
  c.progressive.start_steps = 64
  # 0: distill.num_train_steps split evenly over the log2(start_steps)
  # rounds down to one step, whatever k are asked for: the chain to k = 1
  # costs what one moment-matching student costs, and a k-step student
  # costs the same in every run (at 64: k = 8 after 3 of 6 rounds, half a
  # student's budget).
  c.progressive.steps_per_round = 0
  c.progressive.learning_rate = 1e-4
  c.progressive.warmup_steps = 0
  c.progressive.grad_clip = 1.0
  # Sampling only: ((k, power), ...) of the student's DDIM grid (1: the
  # uniform grid it was distilled on), for tune_sampler.
  c.progressive.time_powers = ()

  # Consistency distillation (docs/ALGORITHMS.md §4b): one consistency model
  # (consistency_k<smallest k>), scored with k-step multistep consistency
  # sampling at every k of distill.sampling_steps; train_seeds copies it.
  # Settings from one source, the paper's CIFAR-10 CD (batch 512 as
  # toy2d's), except N (docs/baselines.md). [paper]: mu = 0.95, Heun, Adam at 4e-4 (CIFAR-10,
  # batch 512, N = 18; ImageNet-64: N = 40, 8e-6 at batch 2048), iCT's
  # pseudo-Huber c = 0.00054 sqrt(dim). N = 40: on Gaussian data with the
  # exact teacher, Heun over 18 points ends 10% high in covariance, over
  # 40 points 2% (tests/test_baselines.py).
  c.consistency = ml_collections.ConfigDict()
  c.consistency.num_points = 40
  c.consistency.ema_decay = 0.95
  c.consistency.solver = 'heun'    # heun | ddim (Euler)
  c.consistency.huber_c = 0.00054
  # The noise range in the variance-exploding view z/alpha = x + sigma eps
  # [paper: EDM's], clipped to the schedule's; sampling starts at sigma_max.
  c.consistency.sigma_min = 0.002
  c.consistency.sigma_max = 80.0
  c.consistency.learning_rate = 4e-4
  c.consistency.warmup_steps = 0
  c.consistency.grad_clip = 0.0    # [paper]: none
  # Samples come from an EMA of the online weights, bias-corrected; 0: the
  # online weights. [paper]: 0.9999 over 600k-800k updates; [ours] 0.999
  # at budgets of a few thousand updates, where 0.9999 would still weigh
  # the first updates.
  c.consistency.sample_ema_decay = 0.999
  # Sampling only: ((k, power), ...), the multistep time points t_i =
  # (1 - i/k)^power at those k (1: uniform in t, the default). Tune them
  # with `python -m mmd_jax.evaluation.tune_sampler` (docs/baselines.md).
  c.consistency.time_powers = ()

  # EM distillation (docs/ALGORITHMS.md §4): the `emd` and `diff_instruct`
  # stages train one-step generators with distill.{num_train_steps,
  # batch_size, warmup_steps, grad_clip, guidance}; their own settings live
  # here.
  c.emd = ml_collections.ConfigDict()
  # The generators' own number of updates (0: distill.num_train_steps), for
  # one-step generators that need a longer budget than the few-step
  # students they are compared with (say so beside any comparison).
  c.emd.num_train_steps = 0
  c.emd.generator_learning_rate = 1e-4
  c.emd.score_learning_rate = 1e-4
  c.emd.b1 = 0.0                   # Adam, warm-up then linear decay to 0
  c.emd.b2 = 0.99
  c.emd.logsnr_generator = 0.0     # lambda*: g(z) is the net at this log-SNR
  c.emd.langevin_steps = 16        # K (toy2d ablation: K=16 beat K<=8)
  c.emd.parameterization = 'eps'   # eps: non-centred (eps, z) | x: centred
  c.emd.gamma_eps = 0.3
  c.emd.gamma_z = 0.01
  c.emd.noise_cancellation = 'eps'  # eps | none
  c.emd.weighting = 'inv_snr'      # w(t): inv_snr | sigma_over_alpha | one
  c.emd.t_min = 0.02               # t ~ U[t_min, t_max]
  c.emd.t_max = 0.98
  # Student-score updates per generator update. 4 halved Diff-Instruct's
  # energy distance on the imbalanced toy (docs/where_emd_should_win.md) at 2x its step
  # cost; 1 stays the default until digits/images are measured with it.
  c.emd.score_updates = 1
  # network | analytic: the toy mixtures' exact denoiser as the teacher of
  # the E- and M-steps (emd and diff_instruct); the generator and score net
  # still start from the trained teacher network.
  c.emd.teacher = 'network'
  # euler | ou: Langevin as written, or with the N(0, I) part of the target
  # integrated exactly (no step-size bias there; docs/ALGORITHMS.md §4).
  c.emd.integrator = 'euler'
  # network | quadrature: the fake score d needs is the student score net,
  # or (2-D toys) the generator's exact diffused denoiser by quadrature over
  # z (docs/ALGORITHMS.md §4c), which removes the net's error.
  c.emd.fake_score = 'network'
  # Classifier-free guidance of the fake score too, against the null
  # condition, as SiD-LSG does (an A/B against guiding the teacher only,
  # distill.guidance); 0: off.
  c.emd.fake_guidance = 0.0
  # The student score network's denoising loss weight: v | edm | snr | flat
  # (the image configs match their teacher's, edm).
  c.emd.score_loss_weight = 'v'
  # Extra emd stages, one per entry, e.g. 'langevin_steps=16,gamma_eps=0.3'
  # (keys: the EMD settings above); each writes emd_k1_<setting>.
  c.emd.sweep = ()

  # AEVB (docs/ALGORITHMS.md §5): the `vae` stage. [paper]: estimator B
  # (analytic KL), L = 1, minibatch 100, 500 hidden units, latent sizes
  # 3..200, Adagrad 0.01-0.1. [ours]: Adam (faster on the digits), and conv
  # nets.
  c.vae = ml_collections.ConfigDict()
  c.vae.latent_dim = 10
  c.vae.arch = 'mlp'               # mlp | conv
  c.vae.hidden = 500               # mlp width, or conv base channels
  c.vae.likelihood = 'bernoulli'   # bernoulli (grey levels in [0,1]) | gaussian
  c.vae.num_samples = 1            # L, z samples per datapoint
  c.vae.batch_size = 100
  c.vae.num_train_steps = 20000
  c.vae.optimizer = 'adam'         # adam | adagrad
  c.vae.learning_rate = 1e-3
  c.vae.iwae_samples = 1000        # K of the IWAE log-likelihood (evaluation)
  c.vae.eval_batch_size = 100      # datapoints per IWAE call

  # Latent diffusion (stages/vae.py, space.py): a VAE stage directory to
  # diffuse in, read where it is. A run whose stages hold 'vae' before a
  # diffusion stage trains one in W/vae instead.
  c.latent = ml_collections.ConfigDict()
  c.latent.vae_checkpoint = ''

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 2000
  c.checkpoint.keep = 2

  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 500
  c.log.sample_every_steps = 0   # 0: only at the end of a stage
  c.log.num_preview_samples = 1000
  # TensorBoard events beside metrics.jsonl (TF's own gs:// support writes
  # them to a bucket workdir).
  c.log.tensorboard = True

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 4000
  c.eval.every_steps = 0         # distillation: score every N steps (0: off)
  c.eval.batch_size = 2000
  c.eval.teacher_steps = (1, 2, 4, 8, 16, 64, 256)
  c.eval.samplers = ('ancestral',)  # ancestral | ddim
  # Many-step models: ((k, power), ...), the time grid t_i = (1 - i/k)^power
  # of their samplers at those k (1: uniform in t). Tune with
  # `python -m mmd_jax.evaluation.tune_sampler`.
  c.eval.time_powers = ()
  c.eval.guidance = 0.0          # CFG weight for conditional teachers
  c.eval.seed = 1
  # Repeat sampling with this many independent seeds: report rows hold the
  # mean (metrics) and the standard deviation (metrics_std) over them.
  c.eval.num_seeds = 1
  c.eval.mmd_bandwidths = (0.1, 0.3, 1.0)
  c.eval.classifier_steps = 2000  # digits classifier training steps
  c.eval.pr_k = 3                 # k-NN precision/recall
  # Inception FID / IS (image data): the .npz written by
  # `python -m mmd_jax.evaluation.convert_inception` (empty: off), and an
  # optional ADM-format reference .npz (mu, sigma); without one, the
  # reference statistics are computed from the real data and cached in
  # W/evaluate.
  c.eval.inception_weights = ''
  c.eval.fid_reference = ''
  c.eval.inception_batch_size = 200
  # Without fid_reference, image data's reference statistics come from this
  # tfds split ('' = the training split), its first num_reference images.
  c.eval.fid_reference_split = ''
  c.eval.num_reference = 50_000
  # k-NN precision/recall compare equal-size sets of at most this many
  # (pairwise distances are quadratic in it).
  c.eval.pr_num_samples = 10_000

  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1})
  # --mode=describe: also estimate the run on these accelerator targets,
  # comma-separated (mmd_jax/device/targets.py: tpu_v5e_256, tpu_v5p_128, h100x8).
  c.describe = ml_collections.ConfigDict({'target': ''})
  # Split every stage's global batch into this many micro-batches inside the
  # jitted step (lax.scan): the same update with 1/n of the activations.
  c.grad_accum_steps = 1
  # Matmul precision inside the steps (jax.default_matmul_precision):
  # default (bf16 passes for f32 on TPU), high (bf16_3x) or highest (f32).
  c.matmul_precision = 'default'
  # A step with a non-finite loss, gradient or state changes nothing; this
  # many in a row stop the run.
  c.max_nonfinite_steps = 10
  return c

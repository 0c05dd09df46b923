"""Typed experiment configuration.

One YAML file under ``experiments/`` states only what differs from the defaults
below; ``key=value`` overrides from the command line are applied on top.
Unknown keys, wrong types (including PyYAML's habit of reading ``5e-4`` as a
string) and out-of-range values raise :class:`ConfigError` naming the file and
the key, so a typo never silently trains the wrong model.

One file, though near 500 lines: a third of it is the docstring under every
field, and each choice is read in three places here -- its list (``OBJECTIVES``,
...), the field that takes it, and the rule in :func:`validate` -- which belong
side by side. Other modules import the lists and rules (:func:`split_problem`)
from here rather than repeat them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

OBJECTIVES = ("beta", "capacity", "factor", "btcvae")
LIKELIHOODS = ("bernoulli", "gaussian")
SOURCES = ("auto", "dsprites", "procedural")
ARCHS = ("burgess", "burgess_leaky", "original")
KL_SCALES = ("none", "batch_over_n")
COMPILE_MODES = ("auto", "on", "graphs", "off")
OPTIMIZERS = ("adam", "sgd")
METRICS = ("mig", "sap", "dci", "beta_vae", "factor_vae")
"""Disentanglement metrics (bcvae.metrics), the choices of ``eval.metrics``."""
EVAL_METRICS = (*METRICS, "mig_full_grid", "latent_information")
"""What ``bcvae eval`` and ``metrics.evaluate`` compute: also, from every image's posterior, Chen et
al.'s MIG and each latent's KL split into I(x; z_j) and KL(q(z_j) ‖ p(z_j))."""
POSTERIOR_METRICS = ("mig_full_grid", "latent_information")
"""The entries of :data:`EVAL_METRICS` that need the posterior (mean and log-variance) of every image."""
DSPRITES_IMAGES = 737_280
"""Images in dSprites: 3 shapes × 6 scales × 40 orientations × 32 × 32 positions (bcvae.data checks it)."""
SEED_MAX = 2**32 - 1
"""Largest seed every generator the run seeds accepts (NumPy's legacy seed is 32-bit)."""
ACTIVATION_BYTES = {"burgess": 0.8e6, "burgess_leaky": 0.8e6, "original": 4.5e6}
"""Peak memory of one training image's forward and backward pass, measured on CPU (float32)."""
RUN_NAME_CHARS = "A-Za-z0-9_.,=+-"
"""The characters of a run name (a regular-expression class body)."""
RUN_NAME = re.compile(f"[A-Za-z0-9_][{RUN_NAME_CHARS}]*")
"""A run name is one directory name under run_dir: no separators, no leading dot."""


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key."""


@dataclass
class DataConfig:
    source: str = "auto"
    """``auto`` (real npz if present, else procedural), ``dsprites`` or ``procedural``."""
    path: str = "data/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
    """Location of the real dSprites npz (used by ``dsprites`` and ``auto``)."""
    cache_dir: str = "data"
    """Directory holding the HDF5 fold caches."""
    k: int = 10
    """Number of cross-validation folds."""
    fold: int = 0
    """Held-out validation fold, ``0 <= fold < k``; the other k-1 folds train."""
    fold_seed: int = 0
    """Seed of the image-to-fold assignment (independent of the training seed)."""
    subset: int = 0
    """0 = all 737,280 images; n > 0 = a seeded random subset of n images."""


@dataclass
class ModelConfig:
    arch: str = "burgess"
    """``burgess`` (Burgess et al. 2018), ``burgess_leaky`` (the same with leaky encoder units) or
    ``original`` (BatchNorm/LeakyReLU conv net)."""
    z_dim: int = 10
    """Number of latent dimensions."""


@dataclass
class LossConfig:
    objective: str = "capacity"
    """``beta`` (Higgins 2017), ``capacity`` (Burgess 2018), ``factor`` (Kim & Mnih 2018), ``btcvae`` (Chen 2018)."""
    likelihood: str = "bernoulli"
    """Decoder likelihood: ``bernoulli`` on logits or ``gaussian`` (fixed-variance, i.e. summed squared error)."""
    beta: float = 4.0
    """β-VAE: weight β on the KL term."""
    gamma: float = 1000.0
    """Capacity objective: weight γ on |KL − C|."""
    c_max: float = 25.0
    """Capacity objective: final capacity C_max in nats."""
    c_steps: int = 100_000
    """Capacity objective: global steps over which C grows linearly from 0 to C_max."""
    gamma_warmup_steps: int = 0
    """Capacity objective: γ grows linearly from 0 to gamma over these steps, from the end of the warm start (0 = γ at once)."""
    warm_start_steps: int = 0
    """Capacity objective: optimise the plain ELBO (β = 1) for these first steps (0 = none)."""
    warm_start_until_mi: float = 0.0
    """Capacity objective: > 0 = the β = 1 warm start lasts past ``warm_start_steps`` until a training
    batch's I(x; z) reaches this many nats (the decoder reads z); γ's warm-up starts from that step.
    0 = the warm start ends at ``warm_start_steps`` whatever the decoder does."""
    latent_kl_max: float = 0.0
    """Capacity objective: > 0 = also γ·Σ_j max(0, KL_j − latent_kl_max), so no latent holds more than
    this many nats and, once the latents in use are full, KL reaches C only through a further latent.
    Not in the paper: without it the constraint is met by ever narrower posteriors of the latents
    already on (docs/full_length.md, "Where the constraint puts each new nat"). 0 = off (the paper)."""
    kl_scale: str = "none"
    """Capacity objective: ``none`` (γ·|KL − C|, the papers) or ``batch_over_n`` (γ·(B/N)·|KL − C|, the
    original implementation's scaling, N = training-set size: it makes the capacity term ~1000× weaker)."""
    factor_gamma: float = 35.0
    """FactorVAE: weight γ on the total-correlation estimate."""
    tc_alpha: float = 1.0
    """β-TCVAE: weight α on the index-code mutual information."""
    tc_beta: float = 6.0
    """β-TCVAE: weight β on the total correlation."""
    tc_gamma: float = 1.0
    """β-TCVAE: weight γ on the dimension-wise KL."""
    tc_estimator: str = "mss"
    """β-TCVAE: ``mss`` (minibatch stratified) or ``mws`` (minibatch weighted) sampling."""
    disc_lr: float = 1e-4
    """FactorVAE: discriminator Adam learning rate."""
    disc_beta1: float = 0.5
    """FactorVAE: discriminator Adam β1."""
    disc_beta2: float = 0.9
    """FactorVAE: discriminator Adam β2."""
    disc_centre: bool = False
    """FactorVAE: show the discriminator batch-centred codes (z minus the batch mean; each half of its
    loss by its own mean). The true TC ignores a shift common to every code; the discriminator's
    estimate then does too, so it cannot push the code's location off the prior. False = the paper."""


@dataclass
class TrainConfig:
    epochs: int = 30
    """Number of epochs (passes over the k-1 training folds, or steps_per_epoch steps)."""
    steps_per_epoch: int = 0
    """0 = one full pass per epoch; n > 0 = n steps per epoch (short epochs, more validation)."""
    max_steps: int = 0
    """0 = no limit; n > 0 = stop after n global steps (a checkpoint is written there)."""
    checkpoint_every: int = 2000
    """Also write the checkpoint inside an epoch, at the first training log row (``log.every_train``)
    at least this many steps after the last checkpoint (0 = only at epoch ends, the step budget and
    a stop signal), so a run killed outright (SIGKILL, a lost machine) loses few steps. Written just
    after a log row, so the resumed log equals an uninterrupted one row for row."""
    batch_size: int = 64
    """Training batch size (global, across all processes)."""
    optimizer: str = "adam"
    """The VAE's optimiser: ``adam`` (the papers') or ``sgd`` (heavy-ball momentum ``sgd_momentum``,
    no per-parameter scaling: the step is ``lr`` times the gradient, so the reconstruction's step on a
    parameter does not shrink when another term's gradients grow; docs/capacity_plateau.md)."""
    sgd_momentum: float = 0.9
    """SGD's momentum μ (``train.optimizer=sgd``): v ← μ·v + g, θ ← θ − lr·v (torch's form)."""
    lr: float = 5e-4
    """Learning rate of the VAE (Adam's step size, or SGD's factor on the gradient)."""
    adam_beta1: float = 0.9
    """Adam β1 of the VAE."""
    adam_beta2: float = 0.999
    """Adam β2 of the VAE."""
    adam_eps: float = 1e-8
    """Adam ε of the VAE (torch's default; the papers do not state theirs)."""
    grad_clip: float = 0.0
    """> 0 = scale the VAE's gradient down to this global L2 norm whenever it is larger, before the
    optimiser's step (``torch.nn.utils.clip_grad_norm_``; the norm before clipping is logged as
    ``train/grad_norm``). 0 = no clipping, as in the papers."""
    lr_decay: float = 1.0
    """Multiply the learning rate by this factor every lr_decay_epochs epochs (1.0 = constant)."""
    lr_decay_epochs: int = 1
    """Epoch interval of the learning-rate decay."""
    lr_decay_first: int = 0
    """First epoch (0-based) trained at the decayed rate; 0 = lr_decay_epochs (the original decays after epoch 0: 1)."""
    val_batch_size: int = 1024
    """Batch size of validation (no gradients, so larger is faster)."""
    val_max_batches: int = 0
    """0 = validate on the whole held-out fold; n > 0 = only its first n batches."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``/``cuda:N``."""
    compile: str = "auto"
    """torch.compile: ``auto`` (on where it pays: CUDA), ``on``, ``graphs`` (``on`` plus CUDA graphs,
    mode="reduce-overhead": one replay per step instead of a launch per kernel; CUDA only, on a CPU
    it equals ``on``) or ``off``."""
    channels_last: bool = True
    """Use the channels_last memory format (faster convolutions on CPU and GPU)."""
    amp: str = "auto"
    """Mixed precision: ``auto`` (bf16 autocast on CUDA, off on CPU), ``bf16`` or ``off``."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""
    init_from: str = ""
    """A pretrained directory (``pretrained/<experiment>``) or a run directory whose model weights
    start this run at step 0, with a fresh optimiser and every schedule from its start; the same
    model.arch and model.z_dim are required. "" = the architecture's initialisation."""
    redraw_below: float = 0.0
    """With train.init_from: latents whose KL on 4,096 random training images is below this many
    nats start again from the initialisation (``VAE.redraw_latents``, drawn with ``seed``) before
    step 0. 0 = keep every latent as trained."""


@dataclass
class LogConfig:
    every_train: int = 50
    """Log training scalars every this many steps."""
    every_images: int = 100
    """Log reconstructions and latent traversals every this many steps."""
    every_val_images: int = 200
    """Log validation reconstructions every this many validation batches."""
    wandb_mode: str = "auto"
    """``auto`` (offline unless W&B credentials are configured), ``offline``, ``online`` or ``disabled``."""
    wandb_project: str = "bcvae"
    """W&B project name."""
    wandb_entity: str = ""
    """W&B entity (team or user); empty = your default."""
    progress: bool = True
    """Show a tqdm progress bar with the live loss."""


@dataclass
class EvalConfig:
    every_epochs: int = 0
    """Compute disentanglement metrics every this many epochs (0 = never during training)."""
    at_end: bool = True
    """Compute disentanglement metrics when training finishes."""
    metrics: list = field(default_factory=lambda: ["mig", "sap"])
    """Metrics computed during training: any of mig, sap, dci, beta_vae, factor_vae."""
    num_points: int = 10_000
    """Points sampled for MIG / SAP / DCI."""


@dataclass
class Config:
    name: str = ""
    """Experiment name; defaults to the YAML file's stem. Runs go to run_dir/name/fold<k>."""
    seed: int = 0
    """Training seed (initialisation, data order, sampling)."""
    run_dir: str = "runs"
    """Root directory of runs."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Keys that may change when a run resumes: budgets, logging, evaluation and
# execution details do not alter the trajectory already on disk. (A moved
# data.cache_dir rebuilds the same, provenance-checked cache.)
RESUMABLE_CHANGES = (
    "train.epochs", "train.max_steps", "train.checkpoint_every", "train.device", "train.compile", "train.threads",
    "train.val_batch_size", "train.val_max_batches", "log.", "eval.", "run_dir", "data.cache_dir",
)


EXPERIMENTS = Path("experiments")


def experiment_path(exp: str) -> Path:
    """``capacity25`` -> ``experiments/capacity25.yaml``; an existing path is used as is."""
    path = Path(exp)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    return EXPERIMENTS / f"{exp}.yaml"


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path`` (experiment or sweep file); a file that is not UTF-8 or
    not YAML raises :class:`ConfigError` in one line naming the file (and the line)."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r}); "
                          "save it as UTF-8") from None
    except yaml.YAMLError as err:
        # str(err) spans several lines and names "<unicode string>": keep one line naming the file.
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None


def load(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read one experiment YAML, apply ``key=value`` overrides, validate.

    Raises
    ------
    ConfigError
        Missing file, unknown key (with a suggestion), wrong type or
        out-of-range value; the message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        hint = f" (available: {', '.join(available)})" if available else ""
        raise ConfigError(f"{path}: experiment file not found{hint}")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of keys to values, got {type(raw).__name__}")
    cfg = Config(name=path.stem)
    _apply(cfg, raw, str(path), prefix="")
    for item in overrides:
        key, value = _parse_override(item)
        _set(cfg, key, value, "command line", lenient_floats=True)
    validate(cfg, str(path))
    return cfg


def from_dict(raw: dict, source: str = "<dict>") -> Config:
    """Build a validated Config from a nested dict (e.g. a checkpoint's saved config)."""
    cfg = Config()
    _apply(cfg, raw, source, prefix="")
    validate(cfg, source)
    return cfg


def to_dict(cfg: Config) -> dict:
    """Nested plain-dict form (YAML/JSON serialisable)."""
    return dataclasses.asdict(cfg)


def save(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_conflicts(saved: dict, current: Config | dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Keys whose values differ between a checkpoint's config and ``current`` (a Config, or
    a nested dict such as a run's ``config.yaml``), excluding those allowed to change on
    resume (budgets, logging, device) and those in ``ignore``, as ``"key: old -> new"``."""
    current = to_dict(current) if isinstance(current, Config) else current
    # A key newer than either side is no difference while it keeps its default,
    # which reproduces the behaviour the run was trained with.
    defaults = flatten(to_dict(Config()))
    old, new = ({**defaults, **flatten(side)} for side in (saved, current))
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in keys
        if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES) and k not in ignore
    ]


def _apply(obj: Any, raw: dict, source: str, prefix: str) -> None:
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            child = _field_value(obj, str(key), source, dotted)
            if not dataclasses.is_dataclass(child):
                raise ConfigError(f"{source}: {dotted}: expected a value, got a mapping")
            _apply(child, value, source, prefix=f"{dotted}.")
        else:
            _set(obj, str(key), value, source, root_prefix=prefix)


def _set(obj: Any, key: str, value: Any, source: str, *, root_prefix: str = "",
         lenient_floats: bool = False) -> None:
    """Set dotted ``key`` on the dataclass tree ``obj`` after type checking."""
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        obj = _field_value(obj, part, source, root_prefix + ".".join(parts[: i + 1]))
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"{source}: {root_prefix}{key}: {'.'.join(parts[: i + 1])} is not a section")
    dotted = root_prefix + key
    current = _field_value(obj, parts[-1], source, dotted)
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"{source}: {dotted}: is a section, give a mapping of its keys")
    hint = {f.name: f.type for f in dataclasses.fields(obj)}[parts[-1]]
    setattr(obj, parts[-1], _coerce(value, hint, dotted, source, lenient_floats))


def _field_value(obj: Any, name: str, source: str, dotted: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{dotted.rsplit('.', 1)[0] + '.' if '.' in dotted else ''}{close[0]}'?)" if close else ""
        raise ConfigError(f"{source}: unknown key '{dotted}'{hint}")
    return getattr(obj, name)


def _coerce(value: Any, hint: str, dotted: str, source: str, lenient_floats: bool) -> Any:
    """Check ``value`` against the field's annotation (a string under PEP 563)."""
    where = f"{source}: {dotted}"
    if hint == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)  # 1e5 written in YAML as 1.0e+5
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _looks_numeric(value):
            if lenient_floats:
                return float(value)
            raise ConfigError(
                f"{where}: {value!r} is read as a string (YAML needs a dot or sign in the exponent: "
                f"write {float(value)!r} or e.g. 5.0e-4)"
            )
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads on/off as booleans (train.compile: off)
            return "on" if value else "off"
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if hint == "list":
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    raise ConfigError(f"{where}: cannot set a value of type {hint}")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"command line: override {item!r} must look like key=value (e.g. train.lr=1e-4)")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _check(cond: bool, source: str, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{source}: {key}: {message}")


def _one_of(value: str, choices: tuple, source: str, key: str) -> None:
    _check(value in choices, source, key, f"must be one of {', '.join(choices)}, got {value!r}")


def _check_memory(batch: int, arch: str, source: str) -> None:
    """A training step must fit in this machine's memory (checked before anything is built)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this platform: nothing to compare with
        return
    need = batch * ACTIVATION_BYTES.get(arch, max(ACTIVATION_BYTES.values()))
    _check(need < total, source, "train.batch_size",
           f"{batch:,} images need about {need / 2**30:,.0f} GiB for one training step "
           f"({ACTIVATION_BYTES.get(arch, 0) / 1e6:.1f} MB per image for the {arch} network), "
           f"more than this machine's {total / 2**30:.0f} GiB")


def split_problem(d: DataConfig, *, with_fold: bool = True) -> tuple[str, str] | None:
    """Why ``data.k``, ``data.fold`` and ``data.subset`` cannot make a cross-validation split,
    as (key, message) of the first rule broken; None when they can.

    The one home of these rules: :func:`validate` reports them for a config, and the data
    layer (which is also handed configs built in code) for what it is asked to build or
    read. ``with_fold=False`` leaves ``data.fold`` out: one fold cache serves every fold.
    """
    if d.k < 2:
        return "data.k", f"needs at least 2 folds (one is held out), got {d.k}"
    if with_fold and not 0 <= d.fold < d.k:
        return "data.fold", f"must be in 0..{d.k - 1} (data.k={d.k}), got {d.fold}"
    if d.subset < 0:
        return "data.subset", f"must be >= 0, got {d.subset}"
    if d.subset and d.subset < 2 * d.k:
        return "data.subset", f"must be 0 or >= 2*k (two images per fold of data.k={d.k}), got {d.subset}"
    if d.subset > DSPRITES_IMAGES:
        return "data.subset", (f"must be at most the {DSPRITES_IMAGES:,} images of dSprites (0 = all), "
                               f"got {d.subset}")
    return None


def validate(cfg: Config, source: str) -> None:
    """Range and choice checks that types alone cannot express."""
    d, m, l, t, g, e = cfg.data, cfg.model, cfg.loss, cfg.train, cfg.log, cfg.eval
    _one_of(d.source, SOURCES, source, "data.source")
    problem = split_problem(d)
    if problem is not None:
        key, message = problem
        raise ConfigError(f"{source}: {key}: {message}")
    for key, value in (("seed", cfg.seed), ("data.fold_seed", d.fold_seed)):
        _check(0 <= value <= SEED_MAX, source, key, f"must be in 0..{SEED_MAX}, got {value}")
    _check(bool(RUN_NAME.fullmatch(cfg.name)), source, "name",
           f"must be a plain directory name (letters, digits and _ . , = + -, not starting with '.' or '-'), "
           f"got {cfg.name!r}")
    _one_of(m.arch, ARCHS, source, "model.arch")
    _check(m.z_dim >= 1, source, "model.z_dim", f"must be >= 1, got {m.z_dim}")
    _one_of(l.objective, OBJECTIVES, source, "loss.objective")
    _one_of(l.likelihood, LIKELIHOODS, source, "loss.likelihood")
    _one_of(l.tc_estimator, ("mss", "mws"), source, "loss.tc_estimator")
    _one_of(l.kl_scale, KL_SCALES, source, "loss.kl_scale")
    _check(l.warm_start_until_mi == 0 or l.objective == "capacity", source, "loss.warm_start_until_mi",
           f"a warm start belongs to the capacity objective only (loss.objective is {l.objective!r})")
    _check(l.kl_scale == "none" or l.objective == "capacity", source, "loss.kl_scale",
           f"{l.kl_scale!r} scales the capacity objective only (loss.objective is {l.objective!r})")
    _check(l.latent_kl_max == 0 or l.objective == "capacity", source, "loss.latent_kl_max",
           f"a per-latent cap belongs to the capacity objective only (loss.objective is {l.objective!r})")
    _check(l.latent_kl_max == 0 or l.latent_kl_max * m.z_dim >= l.c_max, source, "loss.latent_kl_max",
           f"{m.z_dim} latents of at most {l.latent_kl_max} nats cannot hold C_max = {l.c_max} nats")
    for key in ("beta", "gamma", "c_max", "factor_gamma", "tc_alpha", "tc_beta", "tc_gamma", "warm_start_until_mi",
                "latent_kl_max"):
        value = getattr(l, key)
        _check(math.isfinite(value) and value >= 0, source, f"loss.{key}", f"must be finite and >= 0, got {value}")
    _check(l.c_steps >= 1, source, "loss.c_steps", f"must be >= 1, got {l.c_steps}")
    for key in ("gamma_warmup_steps", "warm_start_steps"):
        _check(getattr(l, key) >= 0, source, f"loss.{key}", f"must be >= 0, got {getattr(l, key)}")
    _one_of(t.optimizer, OPTIMIZERS, source, "train.optimizer")
    _check(0 <= t.sgd_momentum < 1, source, "train.sgd_momentum", f"must be in [0, 1), got {t.sgd_momentum}")
    _check(math.isfinite(t.lr) and t.lr > 0, source, "train.lr", f"must be > 0, got {t.lr}")
    _check(l.disc_lr > 0, source, "loss.disc_lr", f"must be > 0, got {l.disc_lr}")
    for key in ("adam_beta1", "adam_beta2"):
        _check(0 <= getattr(t, key) < 1, source, f"train.{key}", f"must be in [0, 1), got {getattr(t, key)}")
    _check(math.isfinite(t.adam_eps) and t.adam_eps > 0, source, "train.adam_eps", f"must be > 0, got {t.adam_eps}")
    _check(math.isfinite(t.grad_clip) and t.grad_clip >= 0, source, "train.grad_clip",
           f"must be finite and >= 0, got {t.grad_clip}")
    for key in ("disc_beta1", "disc_beta2"):
        _check(0 <= getattr(l, key) < 1, source, f"loss.{key}", f"must be in [0, 1), got {getattr(l, key)}")
    _check(t.epochs >= 1, source, "train.epochs", f"must be >= 1, got {t.epochs}")
    for key in ("steps_per_epoch", "max_steps", "checkpoint_every", "val_max_batches", "threads"):
        _check(getattr(t, key) >= 0, source, f"train.{key}", f"must be >= 0, got {getattr(t, key)}")
    _check(t.lr_decay_first >= 0, source, "train.lr_decay_first", f"must be >= 0, got {t.lr_decay_first}")
    for key in ("batch_size", "val_batch_size", "lr_decay_epochs"):
        _check(getattr(t, key) >= 1, source, f"train.{key}", f"must be >= 1, got {getattr(t, key)}")
    _check(0 < t.lr_decay <= 1, source, "train.lr_decay", f"must be in (0, 1], got {t.lr_decay}")
    _check(math.isfinite(t.redraw_below) and t.redraw_below >= 0, source, "train.redraw_below",
           f"must be finite and >= 0, got {t.redraw_below}")
    _check(t.redraw_below == 0 or t.init_from, source, "train.redraw_below",
           "re-draws latents of trained weights: set train.init_from too")
    n = d.subset or DSPRITES_IMAGES
    n_train = n - -(-n // d.k)                     # the largest fold may be held out
    _check(t.batch_size <= n_train, source, "train.batch_size",
           f"must be at most the {n_train:,} training images (data.subset={d.subset}, data.k={d.k}), got {t.batch_size}")
    # The batch estimate of I(x; z) cannot exceed log N (kl_split): a higher threshold never ends the warm start.
    _check(l.warm_start_until_mi < math.log(n_train), source, "loss.warm_start_until_mi",
           f"must be below log N = {math.log(n_train):.2f} nats, the ceiling of the I(x; z) estimate on "
           f"{n_train:,} training images, got {l.warm_start_until_mi}")
    _check_memory(t.batch_size, m.arch, source)
    _one_of(t.compile, COMPILE_MODES, source, "train.compile")
    _one_of(t.amp, ("auto", "bf16", "off"), source, "train.amp")
    _check(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"), source, "train.device",
           f"must be auto, cpu or cuda[:N], got {t.device!r}")
    for key in ("every_train", "every_images", "every_val_images"):
        _check(getattr(g, key) >= 1, source, f"log.{key}", f"must be >= 1, got {getattr(g, key)}")
    _one_of(g.wandb_mode, ("auto", "offline", "online", "disabled"), source, "log.wandb_mode")
    for name in e.metrics:
        _check(name in METRICS, source, "eval.metrics", f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    _check(e.every_epochs >= 0, source, "eval.every_epochs", f"must be >= 0, got {e.every_epochs}")
    _check(e.num_points >= 100, source, "eval.num_points", f"must be >= 100, got {e.num_points}")

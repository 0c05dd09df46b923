"""Training: one run = one experiment config on one held-out fold.

The loop trains on the k-1 training folds, validates on the held-out fold
after every epoch, and writes an atomic checkpoint holding everything needed
to continue bit-for-bit: model, discriminator, optimisers, global step, epoch,
position inside the epoch, RNG states, the resolved config and the W&B run id.
Schedules (capacity C, learning rate) and the data order are pure functions of
the global step / epoch, so nothing else needs saving. A run whose checkpoint
exists resumes automatically.

Checkpoint I/O (atomic writes, safe loading, RNG state, the run directory's
lock) lives in :mod:`bcvae.checkpoint`; encoding images for the metrics in
:mod:`bcvae.encode`; what several processes exchange (torchrun) in
:mod:`bcvae.distributed`; training every fold of an experiment in :mod:`bcvae.crossval`.

Why this file is longer than the others: :class:`Trainer` is one state machine
(global step, epoch, position in the epoch, RNG streams, optimisers, W&B run id),
and nearly every method reads or advances that state. Split up, the pieces would
hand the state back and forth; together they read top to bottom in the order a
run lives: construction, run directory and resume, one optimisation step, the
epoch loop, what is logged and validated, the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from bcvae import config as config_mod
from bcvae import distributed, track, viz
from bcvae.checkpoint import (
    CHECKPOINT_VERSION,
    checkpoint_path,
    load_model,
    pick_device,
    run_dir_for,
    load_checkpoint,
    lock_run_dir,
    read_json,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    write_json,
    write_text_atomic,
)
from bcvae.config import Config
from bcvae.data import epoch_order, load_all, load_split
from bcvae.encode import image_source, make_encode
from bcvae.evaluate import accumulate, flatten_scores, heldout_terms, mean_terms, validation_indices
from bcvae.errors import CheckpointError, Interrupted, TrainingError
from bcvae.losses import conditional_warm_start, discriminator_loss, kl_per_dim, vae_loss, warm_end_for, warm_start_over
from bcvae.model import VAE, discriminator_for

log = logging.getLogger("bcvae")


def lr_at(train_cfg, epoch: int) -> float:
    """Step decay, a pure function of the epoch: lr · lr_decay^n, n = the number of decays before
    ``epoch``; the first decayed epoch is ``lr_decay_first`` (0: ``lr_decay_epochs``), then one
    decay every ``lr_decay_epochs`` epochs."""
    every = train_cfg.lr_decay_epochs
    first = train_cfg.lr_decay_first or every
    n = 0 if epoch < first else 1 + (epoch - first) // every
    return train_cfg.lr * train_cfg.lr_decay ** n


def precision(amp: str, device_type: str) -> str:
    """The arithmetic of a training step under ``train.amp`` on a device of ``device_type``:
    ``bf16+tf32`` (CUDA: bf16 autocast, TF32 for what it leaves in float32), ``bf16`` (CPU
    autocast), or ``float32`` (strict: ``off`` anywhere, ``auto`` off CUDA)."""
    cuda = device_type == "cuda"
    if amp == "bf16" or (amp == "auto" and cuda):
        return "bf16+tf32" if cuda else "bf16"
    return "float32"


def sample_posterior(model: VAE, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """z ~ q(z|x), ``(B, 1, 64, 64)`` -> ``(B, D)``; ``eps`` ``(B, D)`` defaults to fresh noise."""
    return model.reparameterise(*model.encode(x), eps)


def _adam(params, lr: float, betas: tuple[float, float], eps: float = 1e-8) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one pass over every parameter) on CPU and CUDA, where torch has it."""
    params = list(params)
    fused = params[0].device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=fused)


def _vae_optimiser(params, train_cfg) -> torch.optim.Optimizer:
    """The VAE's optimiser, ``train.optimizer``: Adam (the papers') or SGD with heavy-ball momentum."""
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train_cfg.lr, momentum=train_cfg.sgd_momentum)
    return _adam(params, train_cfg.lr, (train_cfg.adam_beta1, train_cfg.adam_beta2), train_cfg.adam_eps)


class Trainer:
    """Trains one config on one fold; resumes from ``checkpoint.pt`` when present.

    Parameters
    ----------
    cfg:
        Resolved :class:`~bcvae.config.Config`.
    fresh:
        Start over: an existing run directory is renamed aside, never deleted.
    group:
        W&B group (cross-validation folds of one experiment share it).
    """

    def __init__(self, cfg: Config, *, fresh: bool = False, group: str | None = None):
        self.cfg = cfg
        self.rank, self.world = distributed.start()
        if self.rank:
            log.setLevel(logging.WARNING)  # one process reports progress; warnings still show
        self.device = self._device()
        self.precision = precision(cfg.train.amp, self.device.type)
        if self.device.type == "cuda":
            # TF32 for what autocast leaves in float32; train.amp=off keeps strict float32, which
            # must be said for convolutions too: cuDNN allows TF32 unless told otherwise
            tf32 = "tf32" in self.precision
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.batch_size % self.world:
            raise TrainingError(f"train.batch_size={cfg.train.batch_size} must divide by the {self.world} processes")
        self.dir = run_dir_for(cfg)
        self.ckpt_path = self.dir / "checkpoint.pt"
        self.max_overshoot = -math.inf  # capacity objective: largest logged KL − C (restored on resume)
        # Step at which a conditional warm start (loss.warm_start_until_mi) ended; None while it lasts.
        # Not a function of the step: the checkpoint stores it.
        self.warm_start_end: int | None = None
        self._lock = lock_run_dir(self.dir) if self.rank == 0 else None
        try:
            self._setup(fresh, group)
        except BaseException:
            self.release()
            raise

    def _setup(self, fresh: bool, group: str | None) -> None:
        cfg = self.cfg
        self.split = load_split(cfg.data)
        log.info("data: %s (%d training / %d validation images, fold %d of %d)",
                 self.split.provenance.get("source"), len(self.split.train), len(self.split.val),
                 cfg.data.fold, cfg.data.k)
        # The held-out images pictures show, fixed for the run: every shape, spread factors.
        self.shown = viz.display_sample(self.split.val.factors, min(8, len(self.split.val)), cfg.seed)
        self._build_models()
        self.step = self.epoch = self.step_in_epoch = 0
        self.checkpoint_step = 0  # step of the last checkpoint written or restored
        self.run_id: str | None = None
        self._stop_signal: int | None = None
        self.tracker: track.Tracker | None = None
        self._prepare_run_dir(fresh)
        self.tracker = self._tracker(group) if self.rank == 0 else None
        self.train_model = self._fast_model()

    # ---- construction

    def release(self) -> None:
        """Release the run directory (``fit`` does this when it returns or fails)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _device(self) -> torch.device:
        local = distributed.local_cuda_device(self.world)  # torchrun: this process's GPU
        return local if local is not None else pick_device(self.cfg.train.device)

    def _build_models(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.model = VAE(cfg.model.z_dim, cfg.model.arch).to(self.device, memory_format=self.memory_format)
        self.opt = _vae_optimiser(self.model.parameters(), cfg.train)
        self.disc = discriminator_for(cfg.loss.objective, cfg.model.z_dim)  # FactorVAE's, else None
        self.disc_opt = None
        if self.disc is not None:
            self.disc.to(self.device)
            self.disc_opt = _adam(self.disc.parameters(), cfg.loss.disc_lr, (cfg.loss.disc_beta1, cfg.loss.disc_beta2))
        self.model_ddp = distributed.wrap(self.model, self.world)

    def _fast_model(self) -> nn.Module:
        """The module the training step calls: compiled (``train.compile``) or the eager one."""
        mode = self.cfg.train.compile
        # auto = CUDA only. On a 2-core CPU (benchmarks/README.md) compiling made the default
        # Burgess step 12 % slower with two threads (12 % faster with one); the original model's
        # step is 18 % faster: train.compile=on there.
        if mode == "off" or (mode == "auto" and self.device.type != "cuda"):
            return self.model_ddp
        # graphs: at batch 64 the Burgess step is a few dozen small kernels, so a large GPU waits on
        # launches; a CUDA graph replays the model's forward and backward as one launch each. DDP's
        # gradient hooks cannot live inside a graph, so several processes compile plainly.
        graphs = mode == "graphs" and self.world == 1
        if mode == "graphs" and not graphs:
            log.warning("train.compile=graphs needs one process; %d processes compile without CUDA graphs",
                        self.world)
        try:
            return torch.compile(self.model_ddp, mode="reduce-overhead" if graphs else None)
        except Exception as err:  # compiler unavailable on this platform
            log.warning("torch.compile unavailable (%s); training in eager mode", err)
            return self.model_ddp

    def _amp(self):
        if not self.precision.startswith("bf16"):
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _tracker(self, group: str | None) -> track.Tracker:
        cfg = self.cfg
        tracker = track.tracker_for(self.dir, config_mod.to_dict(cfg), cfg.log, name=f"{cfg.name}-fold{cfg.data.fold}",
                                    group=group or cfg.name, run_id=self.run_id, provenance=self.split.provenance)
        self.run_id = tracker.run_id
        return tracker

    # ---- run directory, checkpoint, resume

    def _prepare_run_dir(self, fresh: bool) -> None:
        if self.rank == 0 and fresh and self.dir.exists():
            aside = self.dir.with_name(f"{self.dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            self.dir.rename(aside)
            log.info("--fresh: moved the previous run to %s", aside)
        distributed.barrier(self.world)
        if self.rank == 0:  # temporaries of checkpoint writes that a kill interrupted
            for tmp in self.dir.glob(f".{self.ckpt_path.name}.tmp-*"):
                tmp.unlink(missing_ok=True)
        if self.ckpt_path.exists():
            self._restore(load_checkpoint(self.ckpt_path))
            return
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            config_mod.save(self.cfg, self.dir / "config.yaml")
            self._truncate_log(0)  # rows of an attempt killed before its first checkpoint
        if self.cfg.train.init_from:
            self._init_from(Path(self.cfg.train.init_from))
        # A step-0 checkpoint naming the W&B run before W&B starts: a kill within the first
        # epoch then resumes the same W&B run and log instead of starting a second one.
        self.run_id = track.new_run_id()
        self._checkpoint()

    def _init_from(self, source: Path) -> None:
        """Start from trained weights (``train.init_from``), re-drawing the latents whose KL is below
        ``train.redraw_below``. Every process does the same, so ranks agree."""
        if not source.exists():
            raise TrainingError(f"train.init_from: {source} does not exist (a pretrained/<experiment> "
                                "directory or a run directory)")
        trained, trained_cfg, _ = load_model(checkpoint_path(source), self.device)
        m = self.cfg.model
        if (trained_cfg.model.arch, trained_cfg.model.z_dim) != (m.arch, m.z_dim):
            raise TrainingError(f"train.init_from: {source} holds a {trained_cfg.model.arch} model with "
                                f"{trained_cfg.model.z_dim} latents; this run builds {m.arch} with {m.z_dim}")
        self.model.load_state_dict(trained.state_dict())
        redraw = self.cfg.train.redraw_below
        if redraw > 0:
            kl = self._kl_per_dim(4096)
            dims = [j for j in range(m.z_dim) if kl[j] < redraw]
            self.model.redraw_latents(dims, self.cfg.seed)
            log.info("train.init_from %s: latents %s (KL below %g nats: %s) re-drawn", source, dims, redraw,
                     ", ".join(f"{kl[j]:.3f}" for j in dims))
        else:
            log.info("train.init_from %s: every latent kept", source)

    @torch.no_grad()
    def _kl_per_dim(self, n: int) -> list[float]:
        """KL(q(z|x) ‖ p(z)) per latent, averaged over ``n`` training images drawn with ``seed``
        (a choice made for training: the held-out fold stays out of it)."""
        images = self.split.train
        idx = np.sort(np.random.default_rng(self.cfg.seed).choice(len(images), min(n, len(images)), replace=False))
        self.model.eval()
        sums = torch.zeros(self.cfg.model.z_dim, dtype=torch.float64)
        for start in range(0, len(idx), self.cfg.train.val_batch_size):
            chunk = idx[start:start + self.cfg.train.val_batch_size]
            mu, logvar = self.model.encode(images.batch(chunk, self.device))
            sums += kl_per_dim(mu.float(), logvar.float()).double().cpu() * len(chunk)
        self.model.train()
        return (sums / len(idx)).tolist()

    def _restore(self, ckpt: dict) -> None:
        # train.amp may change where the arithmetic does not: `off` on a GPU and `auto` on a CPU are
        # both float32, while `auto` is bf16 on the GPU and float32 on the CPU. Checkpoints that
        # record the precision are compared by it; older ones by train.amp as written.
        trained = ckpt.get("precision")
        ignore = ("train.amp",) if trained is not None else ()
        conflicts = config_mod.resume_conflicts(ckpt["config"], self.cfg, ignore)
        if trained is not None and trained != self.precision:
            conflicts.append(f"arithmetic: {trained!r} -> {self.precision!r} (train.amp={self.cfg.train.amp!r} "
                             f"on {self.device.type}; 'off' is float32 on every device)")
        if conflicts:
            raise TrainingError(
                f"{self.ckpt_path} was trained with a different config ({'; '.join(conflicts[:5])}); "
                "resume with the original settings, or start over with FRESH=1 (make) / --fresh")
        if self.rank == 0:
            self._check_config_record(ckpt["config"], ignore)
            config_mod.save(self.cfg, self.dir / "config.yaml")  # the record follows resumable changes
        try:
            self.model.load_state_dict(ckpt["model"])
            if self.disc is not None:
                self.disc.load_state_dict(ckpt["disc"])
            self.opt.load_state_dict(ckpt["opt"])
            if self.disc_opt is not None:
                self.disc_opt.load_state_dict(ckpt["disc_opt"])
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            # load_state_dict's first line is only a heading; the second names the parameter.
            lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
            detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
            raise CheckpointError(f"{self.ckpt_path} holds a different architecture: {detail}") from None
        self.step, self.epoch, self.step_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"]
        self.checkpoint_step = self.step
        self.warm_start_end = ckpt.get("warm_start_end")  # absent in checkpoints of runs without one
        self.run_id = ckpt.get("wandb_run_id")
        set_rng_state(ckpt["rng"])
        if self.rank == 0:
            rows = self._truncate_log(self.step)
            self.max_overshoot = max((r["train/overshoot"] for r in rows if "train/overshoot" in r),
                                     default=-math.inf)
        log.info("resuming %s at step %d (epoch %d)", self.ckpt_path, self.step, self.epoch)

    def _check_config_record(self, trained: dict, ignore: tuple[str, ...] = ()) -> None:
        """The run directory's ``config.yaml`` is a record of the config the checkpoint was trained
        with; a hand edit there would otherwise be silently ignored. Refuse it, naming the keys."""
        path = self.dir / "config.yaml"
        if not path.exists():
            return  # deleted: rewritten from the config in use
        try:
            record = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict):
            raise config_mod.ConfigError(f"{path} is not a readable config; delete it (it is rewritten "
                                         "from the checkpoint's config) and run again")
        edited = config_mod.resume_conflicts(trained, record, ignore)
        if edited:
            raise config_mod.ConfigError(
                f"{path} was edited ({'; '.join(edited[:5])}) but the run's checkpoint was trained with the "
                "old values: a run's config.yaml is a record, not an input. Undo the edit (or delete the file), "
                "and change the experiment file or pass key=value overrides with --fresh instead")

    def _truncate_log(self, step: int) -> list[dict]:
        """Drop log rows written after the checkpoint, so a resumed run's log has no duplicates;
        returns the rows kept."""
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return []
        rows = [r for r in track.read_jsonl(path) if r.get("step", 0) <= step]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def _checkpoint(self) -> None:
        """Rank 0 writes; every process waits for it, so none exits (and has torchrun stop rank 0) mid-write."""
        self.checkpoint_step = self.step
        if self.rank == 0:
            self._write_checkpoint()
        distributed.barrier(self.world)

    def _write_checkpoint(self) -> None:
        if self.tracker is not None:
            self.tracker.sync()  # every row up to this step is on disk before the checkpoint says so
        for p in self.model.parameters():
            if not torch.isfinite(p).all():
                raise TrainingError(f"parameters became non-finite by step {self.step}; "
                                    f"not overwriting the last good checkpoint {self.ckpt_path}")
        payload = {
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "opt": self.opt.state_dict(),
            "disc_opt": self.disc_opt.state_dict() if self.disc_opt is not None else None,
            "step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "warm_start_end": self.warm_start_end,
            "precision": self.precision,   # train.amp resolved on this device (see precision())
            # The data order is epoch_order(n, seed, epoch): (seed, epoch, step_in_epoch) restore it.
            "data_order": {"seed": self.cfg.seed, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch},
            "rng": rng_state(),
            "config": config_mod.to_dict(self.cfg),
            "provenance": json.loads(json.dumps(self.split.provenance, default=str)),
            "wandb_run_id": self.run_id,
        }
        save_checkpoint(self.ckpt_path, payload)

    # ---- one optimisation step

    def _train_step(self, x: torch.Tensor, x_other: torch.Tensor | None) -> dict:
        """One VAE update, then (FactorVAE) one discriminator update on detached codes.

        The VAE loss reads the discriminator with its parameters frozen, and the
        discriminator loss detaches the codes, so neither update leaks gradients
        into the other's parameters.
        """
        cfg = self.cfg
        if self.disc is not None:
            self.disc.requires_grad_(False)
        with self._amp():
            if self.cfg.train.compile == "graphs":
                # A new step: the graph may reuse its output buffers (this step's are consumed below).
                torch.compiler.cudagraph_mark_step_begin()
            logits, mu, logvar, z = self.train_model(x, self._noise())
            mu, logvar, z = distributed.gather_rows((mu.float(), logvar.float(), z.float()), self.world)
            loss, terms = vae_loss(cfg.loss, x, logits.float(), mu, logvar, z, self.step, discriminator=self.disc,
                                   dataset_size=len(self.split.train), warm_end=self.warm_end())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            # DDP has already averaged the gradients, so every process clips the same vector.
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
            terms = {**terms, "grad_norm": norm.detach()}
        self.opt.step()
        if self.disc is not None:
            terms = {**terms, **self._discriminator_step(z, x_other)}
        return terms

    def _discriminator_step(self, z: torch.Tensor, x_other: torch.Tensor) -> dict:
        """FactorVAE Alg. 2, step 2: z ``(B, D)`` of the global batch, x_other this process's share."""
        self.disc.requires_grad_(True)
        with torch.no_grad(), self._amp():
            z_other = sample_posterior(self.model, x_other, self._noise()).float()
            (z_other,) = distributed.gather_rows((z_other,), self.world)
        d_loss, d_terms = discriminator_loss(self.disc, z, z_other, self.cfg.loss.disc_centre)
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        distributed.average_gradients(self.disc.parameters(), self.world)
        self.disc_opt.step()
        return d_terms

    def _noise(self) -> torch.Tensor:
        """ε ~ N(0, I) for this process's rows of the global batch, ``(B/W, D)``.

        Every process draws the whole ``(B, D)`` from the same generator state, so
        W processes use exactly the noise one process would.
        """
        eps = torch.randn(self.cfg.train.batch_size, self.model.z_dim, device=self.device)
        return distributed.share(eps, self.rank, self.world)

    def _guarded_step(self, x, x_other) -> dict:
        """``_train_step`` with a fallback to eager mode when the compiler fails at first use.

        The retry restores the generator first, so it draws the noise the failed
        attempt drew and the run continues exactly as an eager run would.
        """
        if self.train_model is self.model_ddp:
            return self._train_step(x, x_other)
        cuda = [self.device] if self.device.type == "cuda" else []
        state = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]
        try:
            return self._train_step(x, x_other)
        except Exception as err:
            if isinstance(err, TrainingError):
                raise
            log.warning("torch.compile failed (%s: %s); continuing in eager mode",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            self.train_model = self.model_ddp
            torch.set_rng_state(state[0])
            for device, cuda_state in zip(cuda, state[1]):
                torch.cuda.set_rng_state(cuda_state, device)
            return self._train_step(x, x_other)

    def warm_end(self) -> float | None:
        """The step the capacity objective's β = 1 warm start ends at, for ``vae_loss``: None =
        ``loss.warm_start_steps`` (fixed length); for a conditional one the step it ended, or
        ``math.inf`` while it lasts."""
        return warm_end_for(self.cfg.loss, self.warm_start_end)

    def _end_warm_start(self, terms: dict) -> None:
        """After an update: end a conditional warm start once the decoder reads z (``warm_start_over``).
        ``terms["mi"]`` is of the global batch, so every process decides alike."""
        if self.warm_start_end is not None or not conditional_warm_start(self.cfg.loss):
            return
        mi = float(terms["mi"])
        if warm_start_over(self.cfg.loss, self.step, mi):
            self.warm_start_end = self.step
            log.info("step %d: the decoder reads z (batch I(x; z) = %.2f nats >= loss.warm_start_until_mi = %g); "
                     "β = 1 warm start over, γ warms up from here", self.step, mi, self.cfg.loss.warm_start_until_mi)

    # ---- loop

    def steps_per_epoch(self) -> int:
        n = len(self.split.train) // self.cfg.train.batch_size
        return self.cfg.train.steps_per_epoch or max(1, n)

    def _budget_reached(self) -> bool:
        return bool(self.cfg.train.max_steps) and self.step >= self.cfg.train.max_steps

    def _batch_indices(self, order: np.ndarray, i: int) -> np.ndarray:
        """This process's share of global batch ``i`` of ``order`` (wrapping around for long epochs)."""
        b = self.cfg.train.batch_size
        idx = np.take(order, np.arange(i * b, (i + 1) * b), mode="wrap")
        return distributed.share(idx, self.rank, self.world)

    def _train_epoch(self) -> bool:
        """Train until the epoch ends (True) or the step budget is reached (False)."""
        cfg, train = self.cfg, self.split.train
        for group in self.opt.param_groups:
            group["lr"] = lr_at(cfg.train, self.epoch)
        order = epoch_order(len(train), cfg.seed, self.epoch)
        # FactorVAE's discriminator sees an independent batch (Kim & Mnih 2018, Alg. 2).
        other = epoch_order(len(train), cfg.seed, self.epoch + 1_000_000) if self.disc is not None else None
        n_steps = self.steps_per_epoch()
        bar = self._progress(n_steps)
        sums, count, tic = {}, 0, time.perf_counter()
        for i in range(self.step_in_epoch, n_steps):
            if self._budget_reached():
                break
            if self._stop_requested():
                self._interrupt()
            x = train.batch(self._batch_indices(order, i), self.device).contiguous(memory_format=self.memory_format)
            x_other = None if other is None else train.batch(self._batch_indices(other, i), self.device)
            terms = self._guarded_step(x, x_other)
            accumulate(sums, terms)
            self.step, self.step_in_epoch, count = self.step + 1, i + 1, count + 1
            self._end_warm_start(terms)
            bar.update(1)
            if self.step % cfg.log.every_train == 0:
                self._log_train(sums, count, tic, bar)
                sums, count, tic = {}, 0, time.perf_counter()
                if cfg.train.checkpoint_every and self.step - self.checkpoint_step >= cfg.train.checkpoint_every:
                    self._checkpoint()  # just after a log row: no half-averaged row is lost
            if self.step % cfg.log.every_images == 0:
                self._log_images()
        if count:
            self._log_train(sums, count, tic, bar)
        bar.close()
        return self.step_in_epoch >= n_steps

    def _progress(self, total: int):
        return tqdm(total=total, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}",
                    disable=not self.cfg.log.progress or self.rank != 0, dynamic_ncols=True, leave=False)

    def _stop_requested(self) -> bool:
        """A signal arrived. Processes agree every ``log.every_train`` steps, so all stop at the same step."""
        if self.world > 1 and self.step % self.cfg.log.every_train:
            return False
        self._stop_signal = distributed.agree_on_stop(self._stop_signal, self.device, self.world)
        return self._stop_signal is not None

    def _log_train(self, sums: dict, count: int, tic: float, bar) -> None:
        values = mean_terms(distributed.mean_over_ranks(sums, self.device, self.world), count, "train")
        if not math.isfinite(values["train/loss"]):
            raise TrainingError(
                f"non-finite training loss ({values['train/loss']}) within steps {self.step - count + 1}..{self.step} "
                f"(epoch {self.epoch}); stopped. The last good checkpoint {self.ckpt_path} is kept. "
                "Try a lower train.lr, or check the data.")
        bar.set_postfix(loss=f"{values['train/loss']:.2f}", step=self.step)
        if self.tracker is None:
            return
        if "train/C" in values:
            # The capacity constraint's slack: KL above C, and the largest such excess so far.
            values["train/overshoot"] = values["train/kl"] - values["train/C"]
            self.max_overshoot = max(self.max_overshoot, values["train/overshoot"])
            values["train/max_overshoot"] = self.max_overshoot
            if self.warm_start_end is not None:
                values["train/warm_start_end"] = self.warm_start_end
        seconds = max(time.perf_counter() - tic, 1e-9)
        values.update({"train/lr": self.opt.param_groups[0]["lr"], "train/epoch": self.epoch,
                       "train/img_per_s": count * self.cfg.train.batch_size / seconds})
        self.tracker.log(values, self.step)
        self._last_kl = [values.get(f"train/kl_dim/{i}", 0.0) for i in range(self.cfg.model.z_dim)]

    # ---- pictures, validation, metrics

    def _log_images(self) -> None:
        """Reconstructions of fixed validation images and latent traversals (grid + GIF)."""
        if self.tracker is None:
            return
        self.model.eval()
        x = self.split.val.batch(self.shown, self.device)
        self.tracker.log_image("images/reconstruction", viz.reconstruction_grid(self.model, x), self.step,
                               caption="top: originals, bottom: reconstructions")
        kl = getattr(self, "_last_kl", None) or [0.0] * self.cfg.model.z_dim
        dims = list(np.argsort(kl)[::-1])  # most informative latent first
        frames = viz.traversal_frames(self.model, x[:1], dims, np.linspace(-3, 3, 13))
        self.tracker.log_image("images/traversal", viz.traversal_grid(frames), self.step,
                               caption=f"rows: latents {dims} (by KL), columns: -3..3")
        gif = viz.write_traversal_gif(frames, self.dir / "media" / "traversal.gif")
        self.tracker.log_gif("images/traversal_gif", gif, self.step)
        self.model.train()

    def validate(self, epoch: int | None = None) -> dict[str, float]:
        """Average loss terms over the held-out fold (never training data).

        Sampling uses a forked RNG seeded by (seed, epoch): validation is
        reproducible and leaves the training RNG untouched, so resuming is exact.
        ``epoch`` (default: the current one) picks the seed.
        """
        cfg = self.cfg
        epoch = self.epoch if epoch is None else epoch

        def log_images(j: int, x: torch.Tensor, idx: np.ndarray) -> None:
            if j % cfg.log.every_val_images == 0 and self.tracker is not None:
                shown = viz.display_sample(self.split.val.factors[idx], min(8, len(idx)), seed=j + 1)
                self.tracker.log_image("images/val_reconstruction", viz.reconstruction_grid(self.model, x[shown]),
                                       self.step, caption=f"validation batch {j}: every shape, spread factors")

        indices = validation_indices(len(self.split.val), cfg.train.val_batch_size, cfg.train.val_max_batches,
                                     cfg.data.fold_seed)
        return heldout_terms(self.model, self.disc, self.split.val, indices, cfg, self.step, self.device,
                             warm_end=self.warm_end(),
                             seed=cfg.seed * 1_000_003 + epoch, dataset_size=len(self.split.train),
                             memory_format=self.memory_format, on_batch=log_images)

    def evaluate(self, metric_names) -> dict:
        """Disentanglement metrics of the encoder mean (see :mod:`bcvae.metrics`)."""
        from bcvae.metrics import evaluate  # lazy for start-up time: scikit-learn and scipy load in ~1 s

        encode = make_encode(self.model, self.device, channels_last=self.cfg.train.channels_last)
        render = image_source(self.split.provenance, lambda: load_all(self.cfg.data))
        return evaluate(encode, metrics=tuple(metric_names), seed=self.cfg.seed,
                        num_points=self.cfg.eval.num_points, render=render)

    def _log_eval(self, result: dict) -> dict[str, float]:
        scores = flatten_scores(result["scores"])
        if self.tracker is not None:
            self.tracker.log({f"eval/{k}": v for k, v in scores.items()}, self.step)
        return scores

    # ---- the run

    def fit(self) -> dict:
        """Train to the configured budget; returns the final summary (also in ``summary.json``)."""
        exit_code = 1
        try:
            with self._signals():
                summary = self._fit()
            exit_code = 0
            return summary
        finally:
            if self.tracker is not None:
                self.tracker.finish(exit_code)
            self.release()

    def _fit(self) -> dict:
        cfg, val = self.cfg, {}
        if self.epoch >= cfg.train.epochs or self._budget_reached():
            summary = self._completed_summary()
            if summary is not None:
                log.info("%s is already complete (step %d, epoch %d)", self.dir, self.step, self.epoch)
                return summary
            # Trained to the end, but stopped before its summary (or evaluation) was written:
            # validate the final checkpoint again (same forked seed, same numbers) and finish.
            log.info("%s: training finished at step %d but its final summary or evaluation is missing; "
                     "finishing it", self.dir, self.step)
            last_epoch = self.epoch - 1 if self.step_in_epoch == 0 and self.epoch > 0 else self.epoch
            return self._finish(self.validate(epoch=last_epoch))
        while self.epoch < cfg.train.epochs:
            if not self._train_epoch():
                break  # step budget reached inside the epoch
            val = self._end_of_epoch()
        if not self.step_in_epoch == 0 or not val:
            val = self.validate()  # stopped inside an epoch: validate where we are
            self._log_val(val)
            self._checkpoint()
        return self._finish(val)

    def _end_of_epoch(self) -> dict:
        val = self.validate()
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self._log_val(val)
        every = self.cfg.eval.every_epochs
        if every and self.epoch % every == 0 and self.epoch < self.cfg.train.epochs and self.rank == 0:
            self._log_eval(self.evaluate(self.cfg.eval.metrics))
        self._checkpoint()
        return val

    def _log_val(self, val: dict) -> None:
        line = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in val.items() if "kl_dim" not in k)
        log.info("epoch %d step %d validation: %s", self.epoch, self.step, line)
        if self.tracker is not None:
            self.tracker.log({**val, "val/epoch": self.epoch}, self.step)

    def _finish(self, val: dict) -> dict:
        summary = {"step": self.step, "epoch": self.epoch, **val}
        if self.cfg.eval.at_end and self.cfg.eval.metrics and self.rank == 0:
            result = self.evaluate(self.cfg.eval.metrics)
            summary.update({f"eval/{k}": v for k, v in self._log_eval(result).items()})
            write_json(self.dir / "eval.json", {**result, "step": self.step, "checkpoint": str(self.ckpt_path)})
        if self.rank == 0:
            summary["provenance"] = self.split.provenance
            write_json(self.dir / "summary.json", summary)
            if self.tracker is not None:
                self.tracker.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        return summary

    def _completed_summary(self) -> dict | None:
        """``summary.json`` when the run is complete at its checkpoint's step: the summary is of
        that step and, when ``eval.at_end`` asks for metrics, so is ``eval.json``. Else None."""
        summary = read_json(self.dir / "summary.json")
        if summary is None or summary.get("step") != self.step:
            return None
        if self.cfg.eval.at_end and self.cfg.eval.metrics:
            result = read_json(self.dir / "eval.json")
            if result is None or result.get("step") != self.step:
                return None
        return summary

    @contextlib.contextmanager
    def _signals(self):
        """SIGTERM / SIGINT set a flag; the loop checkpoints at the next step and stops."""
        def handler(signum, _frame):
            self._stop_signal = signum

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _interrupt(self) -> None:
        self._checkpoint()
        name = signal.Signals(self._stop_signal).name
        raise Interrupted(
            f"received {name} at step {self.step} (epoch {self.epoch}); checkpoint saved to {self.ckpt_path}. "
            "Run the same command again to resume.", self._stop_signal)


def train(cfg: Config, *, fresh: bool = False, group: str | None = None) -> dict:
    """Train (or resume) one run; see :class:`Trainer`."""
    try:
        return Trainer(cfg, fresh=fresh, group=group).fit()
    finally:
        distributed.end()

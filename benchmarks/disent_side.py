"""The disent half of ``benchmarks/peers.py``: its training loop and its metrics, fed by bcvae.

Importing this module imports disent (PyPI ``disent==0.8.0``) and Lightning, so
only ``peers.py`` and the tests that need the peer environment import it; the
environment is ``.venv-peers``, which ``make bench-peers`` builds.

* Network: bcvae's Burgess VAE inside disent's model classes
  (:class:`BurgessEncoder`, :class:`BurgessDecoder` under ``disent.model.AutoEncoder``),
  trained by disent's ``BetaVae`` framework with Bernoulli (``"bce"``, on logits)
  reconstruction and ``loss_reduction="mean_sum"``: rec summed over pixels and KL
  summed over latents, both averaged over the batch, which is bcvae's ``objective: beta``.
* Data path as disent's README sets it up: a ground-truth data object,
  ``DisentDataset(data, sampler=SingleSampler(), transform=ToImgTensorF32())`` and a
  ``DataLoader(batch_size=64, shuffle=True, num_workers=0)``; the images are the
  uint8 0/255 arrays (H, W, 1) disent's own dSprites class serves.
* Loop: ``lightning.Trainer(...).fit``. bcvae's steps take their turns inside it,
  from a callback, so both see the same machine load (:class:`Turns`).
* Metrics: ``disent.metrics`` on a data object whose observations are the factor
  classes themselves (:class:`ClassesData`), with a representation function that
  looks the codes up in a :class:`bcvae.metrics.CodeSource` shared with bcvae's
  metrics: both libraries see exactly the same code for the same image.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

_TORCHVISION_OPS: torch.library.Library | None = None  # kept alive: the schemas live as long as this object


def declare_missing_torchvision_ops() -> str | None:
    """Let ``import torchvision`` succeed where its compiled ops cannot load; returns a note, or None.

    The torchvision 0.28.0 wheel in this machine's package mirror is the CUDA build: its
    ops library links libtorch_cuda, which the CPU torch does not ship, so it fails to
    load, and torchvision's ``_meta_registrations`` then registers fake kernels for
    ``torchvision::nms`` and ``torchvision::qnms`` without checking that the ops exist
    ("operator torchvision::nms does not exist"). Lightning's torchmetrics and disent's
    image transforms import torchvision, but nothing here calls those ops: declaring
    their schemas (with no kernel) lets the import finish. A torchvision whose ops load
    (a ``+cpu`` wheel, or torch built for CUDA) is left alone.
    """
    global _TORCHVISION_OPS
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None or _TORCHVISION_OPS is not None:
        return None
    try:
        for lib in sorted(Path(spec.origin).parent.glob("_C*.so")):
            torch.ops.load_library(str(lib))
        return None
    except OSError as err:
        _TORCHVISION_OPS = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _TORCHVISION_OPS.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"torchvision's compiled ops do not load with this torch ({reason}); nms/qnms declared without kernels"


TORCHVISION_NOTE = declare_missing_torchvision_ops()

import lightning as L  # noqa: E402
from disent.dataset import DisentDataset  # noqa: E402
from disent.dataset.data import ArrayGroundTruthData, GroundTruthData  # noqa: E402
from disent.dataset.sampling import SingleSampler  # noqa: E402
from disent.dataset.transform import ToImgTensorF32  # noqa: E402
from disent.frameworks.vae import BetaVae  # noqa: E402
from disent.metrics import metric_dci, metric_factor_vae, metric_mig, metric_sap  # noqa: E402
from disent.metrics._dci import _compute_dci  # noqa: E402
from disent.metrics._mig import _compute_mig  # noqa: E402
from disent.metrics._sap import _compute_sap  # noqa: E402
from disent.model import AutoEncoder, DisentDecoder, DisentEncoder  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from bcvae.data import FACTOR_NAMES, FACTOR_SIZES  # noqa: E402
from bcvae.metrics import CodeSource  # noqa: E402
from bcvae.model import VAE  # noqa: E402

VERSION = importlib.metadata.version("disent")  # the package has no __version__
VARYING = [i for i, size in enumerate(FACTOR_SIZES) if size > 1]  # shape, scale, orientation, posX, posY


# ---------------------------------------------------------------- the same network in disent's classes


class BurgessEncoder(DisentEncoder):
    """bcvae's Burgess encoder as a disent encoder: ``(B, 1, 64, 64) -> (B, 2·z)`` = [μ, log σ²],
    the layout disent's Gaussian frameworks split with ``z_multiplier=2``."""

    def __init__(self, vae: VAE):
        super().__init__(x_shape=(1, 64, 64), z_size=vae.z_dim, z_multiplier=2)
        self.net = vae.encoder

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BurgessDecoder(DisentDecoder):
    """bcvae's Burgess decoder as a disent decoder: ``(B, z) -> (B, 1, 64, 64)`` Bernoulli logits."""

    def __init__(self, vae: VAE):
        super().__init__(x_shape=(1, 64, 64), z_size=vae.z_dim)
        self.net = vae.decoder

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def beta_vae(vae: VAE, beta: float, lr: float) -> BetaVae:
    """disent's β-VAE framework around ``vae``'s own modules (they are shared, not copied)."""
    cfg = BetaVae.cfg(optimizer="adam", optimizer_kwargs={"lr": lr}, recon_loss="bce",
                      loss_reduction="mean_sum", beta=beta)
    return BetaVae(model=AutoEncoder(encoder=BurgessEncoder(vae), decoder=BurgessDecoder(vae)), cfg=cfg)


# ---------------------------------------------------------------- disent's data path and loop


def training_loader(images: np.ndarray, batch: int) -> DataLoader:
    """disent's documented data path over ``images`` ``(N, 64, 64)`` uint8 0/1.

    The images are stored as disent's dSprites class stores them, uint8 0/255 with a
    channel axis, and ``ToImgTensorF32`` turns each into a float tensor in [0, 1]. A
    training subset is no full factor grid, so the data object's one "factor" is the
    image index (training only reads images by index).
    """
    array = (np.asarray(images, dtype=np.uint8) * 255)[..., None]  # (N, 64, 64, 1)
    data = ArrayGroundTruthData(array, factor_names=("index",), factor_sizes=(len(array),))
    dataset = DisentDataset(dataset=data, sampler=SingleSampler(), transform=ToImgTensorF32())
    return DataLoader(dataset=dataset, batch_size=batch, shuffle=True, num_workers=0)


Step = Callable[[], int]


class Turns(L.Callback):
    """Gives bcvae's steps their turns inside disent's ``fit``.

    After disent's first ``warmup`` steps, every bcvae variant runs ``warmup``
    untimed steps (its first call may compile); then, each time disent has done
    another ``steps`` steps, each variant does ``steps`` steps. A disent turn is
    timed from the end of the previous bcvae turn to the end of its last step, so
    it includes its DataLoader, the Lightning hooks and logging around each step.
    """

    def __init__(self, ours: dict[str, Step], steps: int, warmup: int, batch: int):
        self.ours, self.steps, self.warmup, self.batch = ours, steps, warmup, batch
        self.rates: dict[str, list[float]] = {"disent": [], **{name: [] for name in ours}}
        self.first_step_s: dict[str, float] = {}
        self.tic = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = trainer.global_step  # optimiser steps taken, this one included
        if done == self.warmup:
            for name, step in self.ours.items():
                tic = time.perf_counter()
                step()
                self.first_step_s[name] = time.perf_counter() - tic
                for _ in range(self.warmup - 1):
                    step()
        elif done > self.warmup and (done - self.warmup) % self.steps == 0:
            self.rates["disent"].append(self.steps * self.batch / (time.perf_counter() - self.tic))
            for name, step in self.ours.items():
                images, tic = 0, time.perf_counter()
                for _ in range(self.steps):
                    images += step()
                self.rates[name].append(images / (time.perf_counter() - tic))
        else:
            return
        self.tic = time.perf_counter()


def race(module: BetaVae, loader: DataLoader, ours: dict[str, Step], *, rounds: int, steps: int,
         warmup: int, batch: int, root: str) -> dict:
    """disent's ``Trainer.fit`` for ``warmup + rounds·steps`` steps, bcvae's variants taking turns.

    Trainer settings are those of disent's README (no logger, no checkpoints) on
    the CPU, with the progress bar and model summary off (bcvae's timing prints
    nothing either). Returns img/s per turn of every variant and fit's wall time.
    """
    turns = Turns(ours, steps, warmup, batch)
    trainer = L.Trainer(max_steps=warmup + rounds * steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[turns], default_root_dir=root)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    tic = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "num_workers=0 may be a bottleneck" etc.: the README's settings
        trainer.fit(module, loader)
    return {"rates": turns.rates, "first_step_s": turns.first_step_s, "fit_s": time.perf_counter() - tic,
            "global_step": trainer.global_step}


# ---------------------------------------------------------------- disent's metrics on bcvae's codes


class ClassesData(GroundTruthData):
    """dSprites' factor grid whose observation of image ``i`` is its five factor classes.

    The representation function then maps classes to codes through a shared
    :class:`~bcvae.metrics.CodeSource`; disent's samplers (uniform factors, one factor
    fixed per batch) run unchanged, and no image is rendered or encoded twice.
    """

    def __init__(self):
        self._sizes = tuple(FACTOR_SIZES[i] for i in VARYING)
        super().__init__()

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(FACTOR_NAMES[i] for i in VARYING)

    @property
    def factor_sizes(self) -> tuple[int, ...]:
        return self._sizes

    def _get_observation(self, idx):
        return np.array(np.unravel_index(int(idx), self._sizes), dtype=np.int64)


def representation(source: CodeSource) -> Callable[[torch.Tensor], np.ndarray]:
    """Batches of five factor classes ``(B, 5)`` -> the source's codes ``(B, D)``."""
    def codes(batch: torch.Tensor) -> np.ndarray:
        varying = np.asarray(batch, dtype=np.int64)
        classes = np.zeros((len(varying), len(FACTOR_SIZES)), dtype=np.int64)
        classes[:, VARYING] = varying
        return source(classes)
    return codes


def sampled(name: str, source: CodeSource, seed: int, sizes: dict) -> tuple[dict, float]:
    """disent's public metric ``name`` with its own sampling (numpy's global generator seeded with
    ``seed``); returns (its result dict, seconds without rendering and encoding)."""
    fn = {"mig": metric_mig, "sap": metric_sap, "dci": metric_dci, "factor_vae": metric_factor_vae}[name]
    dataset = DisentDataset(ClassesData())
    np.random.seed(seed)
    tic, spent = time.perf_counter(), source.seconds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fn(dataset, representation(source), **sizes)
    return {k: float(v) for k, v in out.items()}, time.perf_counter() - tic - (source.seconds - spent)


def same_points(codes: np.ndarray, factors: np.ndarray, n: dict,
                names=("mig", "sap", "dci")) -> dict[str, tuple[dict, float]]:
    """disent's estimators of MIG, SAP and DCI (those in ``names``) on given points, as peers.py calls bcvae's.

    ``codes (N, D)``, ``factors (N, 5)``; MIG on the first ``n["mig"]`` points, SAP trains on
    the first ``n["sap_train"]`` and tests on the next ``n["sap_test"]``, DCI likewise.
    Returns ``{name: (result dict, seconds)}``.
    """
    out = {}
    c, f = np.asarray(codes, dtype=np.float64).T, np.asarray(factors).T  # disent: (dims, points)
    s_tr, s_te = slice(0, n["sap_train"]), slice(n["sap_train"], n["sap_train"] + n["sap_test"])
    d_tr, d_te = slice(0, n["dci_train"]), slice(n["dci_train"], n["dci_train"] + n["dci_test"])
    calls = {"mig": lambda: _compute_mig(c[:, :n["mig"]], f[:, :n["mig"]]),
             "sap": lambda: _compute_sap(c[:, s_tr], f[:, s_tr], c[:, s_te], f[:, s_te], False),
             "dci": lambda: _compute_dci(c[:, d_tr], f[:, d_tr], c[:, d_te], f[:, d_te])}
    for name in names:
        tic = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = calls[name]()
        out[name] = ({k: float(v) for k, v in result.items()}, time.perf_counter() - tic)
    return out

"""The fast training path (channels_last, fused Adam, torch.compile, the fallback to eager)
computes what a plain training loop computes, within floating-point tolerance."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from bcvae import config, encode, train
from bcvae.data import epoch_order, load_split
from bcvae.losses import vae_loss
from bcvae.model import VAE
from conftest import ROOT, smoke_overrides

SMOKE = ROOT / "experiments" / "smoke.yaml"
STEPS = 4


def settings(tmp_path, *extra: str) -> config.Config:
    return config.load(SMOKE, smoke_overrides(tmp_path) + [
        f"train.max_steps={STEPS}", "log.every_train=1", "log.every_images=1000", "log.wandb_mode=disabled",
        "eval.at_end=false", "train.threads=1", "train.val_max_batches=1", *extra])


def trained(tmp_path, *extra: str, compiled: bool = False) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Per-step training losses and final parameters of the trainer with ``extra`` overrides.

    ``compiled``: the run must have trained compiled (not fallen back to eager).
    """
    cfg = settings(tmp_path, *extra)
    trainer = train.Trainer(cfg)
    trainer.fit()
    assert (trainer.train_model is not trainer.model_ddp) == compiled
    rows = train.track.read_jsonl(train.run_dir_for(cfg) / "metrics.jsonl")
    return [r["train/loss"] for r in rows if "train/loss" in r], trainer.model.state_dict()


class HeavyBall:
    """SGD with momentum, by hand: the reference for ``train.optimizer=sgd``."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float):
        self.params, self.lr, self.momentum, self.velocity = params, lr, momentum, None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad.clone() for p in self.params]
        self.velocity = grads if self.velocity is None else [
            self.momentum * v + g for v, g in zip(self.velocity, grads)]
        for p, v in zip(self.params, self.velocity):
            p -= self.lr * v


def plain_loop(cfg: config.Config, norms: list[float] | None = None) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The same training written plainly: contiguous tensors, eager, torch's unfused Adam, VAE.forward.

    With ``train.grad_clip`` > 0 the gradient is scaled by hand to at most that L2 norm;
    ``norms`` collects each step's norm before clipping. With ``train.optimizer=sgd`` the
    heavy-ball step is written out by hand: v ← μ·v + g (v = g at the first step), θ ← θ − lr·v.
    """
    split = load_split(cfg.data)
    torch.manual_seed(cfg.seed)
    model = VAE(cfg.model.z_dim, cfg.model.arch)
    if cfg.train.optimizer == "sgd":
        opt = HeavyBall(list(model.parameters()), cfg.train.lr, cfg.train.sgd_momentum)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                               betas=(cfg.train.adam_beta1, cfg.train.adam_beta2), eps=cfg.train.adam_eps)
    b, order, losses = cfg.train.batch_size, epoch_order(len(split.train), cfg.seed, 0), []
    for step in range(STEPS):
        x = torch.from_numpy(split.train.images(order[step * b:(step + 1) * b])).unsqueeze(1).float()
        logits, mu, logvar, z = model(x)
        loss, _ = vae_loss(cfg.loss, x, logits, mu, logvar, z, step)
        opt.zero_grad()
        loss.backward()
        if cfg.train.grad_clip:
            norm = sum(float((p.grad.double() ** 2).sum()) for p in model.parameters()) ** 0.5
            for p in model.parameters():
                p.grad *= min(1.0, cfg.train.grad_clip / norm)
            if norms is not None:
                norms.append(norm)
        opt.step()
        losses.append(loss.item())
    return losses, model.state_dict()


def assert_close(a: tuple, b: tuple, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    (loss_a, params_a), (loss_b, params_b) = a, b
    assert len(loss_a) == len(loss_b) == STEPS
    np.testing.assert_allclose(loss_a, loss_b, rtol=rtol)
    for key in params_a:
        torch.testing.assert_close(params_a[key], params_b[key], rtol=rtol, atol=atol, msg=key)


def test_default_fast_path_matches_a_plain_training_loop(tmp_path):
    fast = trained(tmp_path / "fast")  # the defaults: channels_last, fused Adam, compile=auto
    assert_close(fast, plain_loop(settings(tmp_path / "fast")))


def test_adam_eps_and_gradient_clipping_train_as_a_plain_loop_with_them(tmp_path):
    # A clip well under the smoke model's gradient norm, so every step is clipped, and an ε
    # large enough to change Adam's steps: both must reach the optimiser as the plain loop applies them.
    extra = ("train.adam_eps=1e-3", "train.grad_clip=5")
    fast = trained(tmp_path / "fast", *extra)
    norms: list[float] = []
    assert_close(fast, plain_loop(settings(tmp_path / "fast", *extra), norms))
    assert min(norms) > 5  # clipping acted on every step
    logged = [r["train/grad_norm"] for r in train.track.read_jsonl(
        train.run_dir_for(settings(tmp_path / "fast", *extra)) / "metrics.jsonl") if "train/grad_norm" in r]
    np.testing.assert_allclose(logged, norms, rtol=1e-4)  # the norm before clipping, one row a step
    # The comparison above can tell a clipped run from an unclipped one. (Only just: Adam undoes a
    # common scaling of the gradient, so clipping acts through ε and through the steps' relative sizes.)
    with pytest.raises(AssertionError):
        assert_close(fast, trained(tmp_path / "unclipped", "train.adam_eps=1e-3"))


def test_sgd_trains_as_a_hand_written_heavy_ball_loop(tmp_path):
    extra = ("train.optimizer=sgd", "train.lr=1e-3", "train.sgd_momentum=0.5")
    fast = trained(tmp_path / "fast", *extra)
    assert_close(fast, plain_loop(settings(tmp_path / "fast", *extra)))
    # The momentum reaches the optimiser: without it the parameters differ.
    with pytest.raises(AssertionError):
        assert_close(fast, plain_loop(settings(tmp_path / "fast", *extra[:2], "train.sgd_momentum=0")))


def test_channels_last_on_and_off_give_the_same_training(tmp_path):
    on = trained(tmp_path / "on", "train.channels_last=true", 'train.compile="off"')
    off = trained(tmp_path / "off", "train.channels_last=false", 'train.compile="off"')
    assert_close(on, off)


def test_bf16_autocast_on_cpu_is_an_opt_in_close_to_float32(tmp_path):
    bf16 = trained(tmp_path / "bf16", "train.amp=bf16")
    fp32 = trained(tmp_path / "fp32", 'train.amp="off"')
    assert bf16[0] != fp32[0]  # bf16 convolutions really ran ...
    np.testing.assert_allclose(bf16[0], fp32[0], rtol=2e-2)  # ... to bf16 precision (8 mantissa bits)


def test_trainer_uses_fused_adam_where_torch_has_it(tmp_path):
    trainer = train.Trainer(settings(tmp_path, "loss.objective=factor"))
    assert trainer.opt.defaults["fused"] and trainer.disc_opt.defaults["fused"]


def test_a_failing_compiler_falls_back_to_eager_with_the_same_result(tmp_path, monkeypatch, caplog):
    def broken_compile(module, **kwargs):
        def call(*args):
            raise RuntimeError("C++ compiler not found (simulated)")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING, logger="bcvae"):
        fallback = trained(tmp_path / "broken", 'train.compile="on"')
    assert any("continuing in eager mode" in r.message for r in caplog.records)
    assert_close(fallback, trained(tmp_path / "eager", 'train.compile="off"'), rtol=1e-6, atol=0)


@pytest.mark.parametrize("mode, compiled", [("auto", False), ("on", True), ("graphs", True), ("off", False)])
def test_compile_setting_on_a_cpu(tmp_path, mode, compiled):
    # auto compiles on CUDA only: on a CPU it slowed the default model down (benchmarks/README.md)
    trainer = train.Trainer(settings(tmp_path, "train.max_steps=0", "train.epochs=2000", f'train.compile="{mode}"'))
    assert (trainer.train_model is not trainer.model_ddp) == compiled  # torch.compile wraps lazily: no cost here


def test_graphs_compiles_for_cuda_graphs_and_marks_every_step(tmp_path, monkeypatch):
    # What train.compile=graphs asks of torch: mode="reduce-overhead" (CUDA graphs), and a new
    # graph step before every forward, so a replay may reuse the previous step's output buffers.
    calls, marks = [], []

    def recording_compile(module, **kwargs):
        calls.append(kwargs)
        return lambda *args: module(*args)

    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    graphs = trained(tmp_path / "graphs", 'train.compile="graphs"', compiled=True)
    assert calls == [{"mode": "reduce-overhead"}]
    assert len(marks) == STEPS
    calls.clear()
    trained(tmp_path / "on", 'train.compile="on"', compiled=True)
    assert calls == [{"mode": None}] and len(marks) == STEPS  # plain compile: no graph steps
    assert_close(graphs, trained(tmp_path / "eager", 'train.compile="off"'), rtol=1e-6, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["on", "graphs"])
def test_compiled_training_matches_eager(tmp_path, mode):
    # On a CPU, graphs compiles like on (CUDA graphs need CUDA); on a GPU this is the graph replay.
    compiled_run = trained(tmp_path / "compiled", f'train.compile="{mode}"', compiled=True)
    assert_close(compiled_run, trained(tmp_path / "eager", 'train.compile="off"'))


# ------------------------------------------------------------------ encoding for the metrics

def encoded_reference(model: VAE, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval().encode(torch.from_numpy(images).unsqueeze(1).float())[0].numpy()


@pytest.fixture
def model_and_images():
    torch.manual_seed(0)
    images = (np.random.default_rng(0).random((300, 64, 64)) > 0.8).astype(np.uint8)
    return VAE(10, "burgess").to(memory_format=torch.channels_last), images


def test_encode_in_batches_gives_the_encoder_mean(model_and_images):
    model, images = model_and_images
    codes = encode.make_encode(model, torch.device("cpu"), batch_size=128, compile="off")(images)
    np.testing.assert_allclose(codes, encoded_reference(model, images), rtol=1e-5, atol=1e-6)


def test_compiled_encode_pads_the_last_batch_and_returns_only_real_rows(model_and_images, monkeypatch):
    model, images = model_and_images
    shapes = []

    def recording_compile(fn, **kwargs):  # stands in for the compiler: same function, shapes recorded
        def call(x):
            shapes.append(tuple(x.shape))
            return fn(x)
        return call

    monkeypatch.setattr(torch, "compile", recording_compile)
    codes = encode.make_encode(model, torch.device("cpu"), batch_size=128, compile="on")(images)
    assert shapes == [(128, 1, 64, 64)] * 3  # 300 images: 128 + 128 + (44 padded to 128)
    np.testing.assert_allclose(codes, encoded_reference(model, images), rtol=1e-5, atol=1e-6)


def test_encode_falls_back_to_eager_when_the_compiler_fails(model_and_images, monkeypatch, caplog):
    model, images = model_and_images
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: _raise)
    with caplog.at_level(logging.WARNING, logger="bcvae"):
        codes = encode.make_encode(model, torch.device("cpu"), batch_size=128, compile="on")(images)
    assert any("encoding in eager mode" in r.message for r in caplog.records)
    np.testing.assert_allclose(codes, encoded_reference(model, images), rtol=1e-5, atol=1e-6)


def _raise(*args):
    raise RuntimeError("C++ compiler not found (simulated)")


@pytest.mark.slow
def test_compiled_encode_matches_eager(model_and_images):
    model, images = model_and_images
    codes = encode.make_encode(model, torch.device("cpu"), batch_size=128, compile="on")(images)
    np.testing.assert_allclose(codes, encoded_reference(model, images), rtol=1e-4, atol=1e-5)

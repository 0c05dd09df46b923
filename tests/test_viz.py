"""Plots: figure layout and image sizes, latent ordering, switch-on order, the
latent -> factor assignment against encoders whose answer is known, history
read back from W&B, and ``write_run_plots`` on the session's smoke run."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from bcvae import latents, plots, track, viz
from bcvae.checkpoint import load_model
from bcvae.data import FACTOR_NAMES, FACTOR_SIZES, render_dsprites
from bcvae.errors import RunFileError
from bcvae.model import VAE
from bcvae.track import read_jsonl

matplotlib.use("Agg")

PAD, TILE = 2, 64
FACTORS = ("shape", "scale", "orientation", "posX", "posY")


def tiles(image: np.ndarray) -> tuple[int, int]:
    """(rows, columns) of 64×64 tiles in an :func:`viz.image_grid` image."""
    h, w = image.shape
    assert (h - PAD) % (TILE + PAD) == 0 and (w - PAD) % (TILE + PAD) == 0, image.shape
    return (h - PAD) // (TILE + PAD), (w - PAD) // (TILE + PAD)


def tile(image: np.ndarray, r: int, c: int) -> np.ndarray:
    top, left = PAD + r * (TILE + PAD), PAD + c * (TILE + PAD)
    return image[top:top + TILE, left:left + TILE]


def shown(fig: Figure, ax_index: int = 0) -> np.ndarray:
    return np.asarray(fig.axes[ax_index].images[0].get_array())


@pytest.fixture(scope="module")
def model() -> VAE:
    torch.manual_seed(0)
    return VAE(z_dim=4).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    classes = np.array([[0, s % 3, 5, 0, 8 + 4 * s, 20 - 2 * s] for s in range(5)])
    return torch.from_numpy(render_dsprites(classes)).float().unsqueeze(1)


def kl_rows(steps, kl_by_latent: dict[int, list[float]], capacity: bool = True) -> list[dict]:
    """Synthetic metrics.jsonl rows with given per-latent KL at each step."""
    rows = []
    for s, step in enumerate(steps):
        row = {"step": step, **{f"train/kl_dim/{i}": v[s] for i, v in kl_by_latent.items()}}
        row["train/kl"] = sum(v[s] for v in kl_by_latent.values())
        if capacity:
            row["train/C"] = 0.5 * step
        rows.append(row)
    return rows


# ------------------------------------------------------------------ uint8 grids

def test_image_grid_places_each_image_in_its_tile():
    imgs = np.random.default_rng(0).integers(0, 2, (5, 64, 64)).astype(np.uint8)
    grid = viz.image_grid(imgs, ncols=3)
    assert grid.dtype == np.uint8 and tiles(grid) == (2, 3)
    for i, img in enumerate(imgs):
        np.testing.assert_array_equal(tile(grid, *divmod(i, 3)), img * 255)
    assert (tile(grid, 1, 2) == 128).all()  # the empty sixth tile stays grey


def test_traversal_gif_has_a_ping_pong_frame_per_value(tmp_path):
    from PIL import Image

    frames = np.random.default_rng(0).random((3, 5, 64, 64)).astype(np.float32)
    path = viz.write_traversal_gif(frames, tmp_path / "sub" / "t.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == 5 + 3  # forward 5, back over the 3 inner values
        assert gif.size == (3 * 66 + 2, 66 + 2)


# ------------------------------------------------------------------ image figures

def test_traversal_figure_rows_are_latents_by_kl_columns_are_values(model, images):
    kl = np.array([0.1, 5.0, 0.0, 2.5])
    values = np.linspace(-2, 2, 5)
    fig = viz.traversal_figure(model, images[:1], kl, values=values)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    image = shown(fig)
    assert tiles(image) == (4, 5)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["z1\n5.00 nats", "z3\n2.50 nats", "z0\n0.10 nats", "z2\n0.00 nats"]
    # Independent check of one tile: decode the image's code with z3 set to +1.
    with torch.no_grad():
        z = model.encode(images[:1])[0]
        z[0, 3] = 1.0
        expected = torch.sigmoid(model.decode(z))[0, 0].numpy()
    np.testing.assert_allclose(tile(image, 1, 3), np.round(expected * 255), atol=1)


def test_traversal_figure_without_kl_computes_it_on_the_image(model, images):
    fig = viz.traversal_figure(model, images[:1])
    assert tiles(shown(fig)) == (4, 9)  # 4 latents, default 9 values in -3..3
    kl = latents.latent_kl(model, images[:1])
    first = fig.axes[0].get_yticklabels()[0].get_text()
    assert first.startswith(f"z{int(np.argmax(kl))}\n")


def test_reconstruction_figure_shows_originals_above_reconstructions(model, images):
    fig = viz.reconstruction_figure(model, images)
    assert len(fig.axes) == 1
    image = shown(fig)
    assert tiles(image) == (2, len(images))
    recon = viz.reconstructions(model, images)
    for i in range(len(images)):
        np.testing.assert_array_equal(tile(image, 0, i), images[i, 0].numpy() * 255)
        np.testing.assert_allclose(tile(image, 1, i), np.round(recon[i] * 255), atol=1)


# ------------------------------------------------------------------ curves

def test_kl_emergence_figure_draws_each_latent_total_and_capacity():
    rows = kl_rows([10, 20, 30], {0: [0.0, 1.0, 3.0], 1: [0.0, 0.0, 0.2], 2: [0.1, 2.0, 2.0]})
    fig = viz.kl_emergence_figure(rows)
    assert len(fig.axes) == 1
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels[:3] == ["z0 (3.0)", "z2 (2.0)", "z1 (0.2)"]  # legend by final KL
    assert labels[3:5] == ["total KL", "capacity C"]
    total = fig.axes[0].get_lines()[3]
    np.testing.assert_allclose(total.get_ydata(), [0.1, 3.0, 5.2])
    no_capacity = viz.kl_emergence_figure(kl_rows([10, 20], {0: [0, 1], 1: [0, 2]}, capacity=False))
    assert "capacity C" not in [line.get_label() for line in no_capacity.axes[0].get_lines()]


def test_loss_curves_figure_has_train_and_validation_per_term():
    rows = [{"step": s, "train/loss": 100.0 / s, "train/rec": 90.0 / s, "train/kl": 1.0 + s} for s in (1, 2, 3, 4)]
    rows += [{"step": s, "val/loss": 110.0 / s, "val/rec": 95.0 / s, "val/kl": 0.5 * s} for s in (2, 4)]
    fig = viz.loss_curves_figure(track.merge_by_step(rows))
    assert len(fig.axes) == 3
    for ax, term in zip(fig.axes, ("loss", "rec", "kl")):
        assert [line.get_label() for line in ax.get_lines()] == ["train", "val"]
        np.testing.assert_array_equal(ax.get_lines()[1].get_xdata(), [2, 4])
        assert ax.get_yscale() == "log"
    signed = viz.loss_curves_figure([{"step": 1, "train/loss": -1.0}, {"step": 2, "train/loss": 3.0}])
    assert signed.axes[0].get_yscale() == "linear"


def test_information_figure_draws_kl_its_split_capacity_and_reconstruction():
    rows = [{"step": s, "train/kl": 0.1 * s, "train/mi": 0.0, "train/marginal_kl": 0.1 * s,
             "train/C": 0.1 * s, "train/rec": 570.0} for s in (10, 20, 30)]
    fig = viz.information_figure(rows)
    info, rec = fig.axes
    lines = {line.get_label(): line for line in info.get_lines()}
    assert list(lines) == ["KL", "I(x; z)", "KL(q(z) ‖ p(z))", "capacity C"]
    np.testing.assert_allclose(lines["I(x; z)"].get_ydata(), [0.0, 0.0, 0.0])   # KL = C, MI = 0: the plateau
    np.testing.assert_allclose(lines["KL"].get_ydata(), lines["capacity C"].get_ydata())
    np.testing.assert_allclose(rec.get_lines()[0].get_ydata(), [570.0] * 3)
    beta = viz.information_figure([{k: v for k, v in r.items() if k != "train/C"} for r in rows])
    assert "capacity C" not in [line.get_label() for line in beta.axes[0].get_lines()]


def test_seeds_figure_draws_each_run_of_each_experiment():
    def run(scale):
        return [{"step": s, "train/rec": 500.0 / (1 + scale * s), "train/kl": scale * s} for s in range(0, 100, 10)]

    histories = {"capacity": {"seed 0": run(1.0), "seed 1": run(0.5)}, "beta": {"seed 0": run(2.0)}}
    fig = viz.seeds_figure(histories)
    axes = fig.get_axes()
    assert len(axes) == 4  # two experiments x (rec, KL)
    rec_capacity, kl_capacity, rec_beta, _ = axes
    assert [l.get_label() for l in rec_capacity.get_lines()] == ["seed 0", "seed 1"]
    assert len(rec_beta.get_lines()) == 1 and rec_capacity.get_yscale() == "log"
    np.testing.assert_allclose(kl_capacity.get_lines()[1].get_ydata(), [0.5 * s for s in range(0, 100, 10)])


def test_step_axes_label_thousands_so_long_runs_stay_readable():
    assert [viz.step_tick(s) for s in (0, 500, 1000, 2500, 100000, 155520)] == \
        ["0", "500", "1k", "2.5k", "100k", "155.52k"]
    rows = [{"step": s, "train/rec": 100.0, "train/kl": 1.0} for s in (0, 50000, 155520)]
    for fig in (viz.seeds_figure({"run": {"seed 0": rows}}), viz.loss_curves_figure(rows),
                viz.information_figure(rows), viz.kl_emergence_figure(rows)):
        for ax in fig.get_axes():
            if ax.get_xlabel():
                assert ax.get_xlabel() == "training step"
                assert ax.xaxis.get_major_formatter()(100000, 0) == "100k"


def test_switch_on_order_follows_first_crossing_of_one_bit():
    steps = [100, 200, 300, 400]
    rows = kl_rows(steps, {
        0: [0.0, 0.1, 0.2, 0.3],   # never on
        1: [0.0, 0.0, 0.8, 2.0],   # on at 300
        2: [0.9, 3.0, 4.0, 5.0],   # on at 100
        3: [0.0, 0.70, 1.0, 1.0],  # 0.70 > ln 2: on at 200
        4: [0.0, 0.69, 3.0, 3.0],  # 0.69 < ln 2: on at 300, ahead of latent 1 (larger KL there)
    })
    rows.reverse()  # order of the rows must not matter
    assert latents.switch_on_order(rows) == [(2, 100), (3, 200), (4, 300), (1, 300)]
    assert latents.switch_on_order(rows, threshold_nats=0.25) == [(2, 100), (3, 200), (4, 200), (1, 300), (0, 400)]
    assert latents.SWITCH_ON_NATS == pytest.approx(np.log(2))
    # A warm start (every latent carries KL) is skipped: counting starts after step 100.
    assert latents.switch_on_order(rows, after_step=100) == [(2, 200), (3, 200), (4, 300), (1, 300)]


def test_switch_on_summary_counts_from_the_objective_proper():
    from types import SimpleNamespace

    rows = kl_rows([100, 200, 300], {0: [2.0, 2.0, 2.0], 1: [2.0, 0.1, 1.0], 2: [0.0, 0.0, 0.0]})
    warm = SimpleNamespace(objective="capacity", warm_start_steps=50, gamma_warmup_steps=100, warm_start_until_mi=0.0)
    assert latents.switch_on_summary(rows, warm) == {
        "switch_on_after": 150, "switch_on_order": [{"latent": 0, "step": 200}, {"latent": 1, "step": 300}]}
    # A conditional warm start ends where the log says (here step 120, past warm_start_steps = 50):
    # the objective proper starts after γ's warm-up from there, at 220.
    conditional = SimpleNamespace(**{**vars(warm), "warm_start_until_mi": 3.0})
    ended = [{**r, "train/warm_start_end": 120} if r["step"] >= 200 else r for r in rows]
    assert latents.switch_on_summary(ended, conditional) == {
        "switch_on_after": 220, "switch_on_order": [{"latent": 0, "step": 300}, {"latent": 1, "step": 300}]}
    # Not ended by the last row: β = 1 throughout, nothing has switched on under the objective.
    assert latents.switch_on_summary(rows, conditional) == {"switch_on_after": 300, "switch_on_order": []}
    beta = SimpleNamespace(objective="beta")
    assert latents.switch_on_summary(rows, beta)["switch_on_order"] == [{"latent": 0, "step": 100},
                                                                        {"latent": 1, "step": 100}]


def test_the_objective_proper_starts_after_the_capacity_warm_start_and_gamma_warm_up():
    from bcvae import config
    from conftest import ROOT

    cfg = config.load(ROOT / "experiments" / "capacity25.yaml")
    # The file's header: the objective proper from step 3,000 when the decoder reads z by step
    # 1,000; a warm start that lasts to step 1,515 (logged) puts it at 3,515.
    assert cfg.loss.warm_start_until_mi > 0
    assert latents.objective_start(cfg.loss, [{"step": 1000, "train/warm_start_end": 1000}]) == 1000 + 2000
    assert latents.objective_start(cfg.loss, [{"step": 1550, "train/warm_start_end": 1515}]) == 1515 + 2000
    assert latents.objective_start(config.load(ROOT / "experiments" / "beta4.yaml").loss) == 0


def test_history_merges_rows_sharing_a_step():
    rows = [{"step": 5, "train/loss": 1.0}, {"step": 5, "val/loss": 2.0}, {"step": 1, "train/loss": 3.0}]
    assert track.merge_by_step(rows) == [{"step": 1, "train/loss": 3.0},
                                       {"step": 5, "train/loss": 1.0, "val/loss": 2.0}]
    with pytest.raises(ValueError, match="history source"):
        track.load_history("anywhere", source="tensorboard")


def test_non_wandb_file_is_refused_with_its_name(tmp_path):
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"not a record file")
    with pytest.raises(RunFileError, match="run-x.wandb"):
        track.history_from_wandb(bad)
    with pytest.raises(FileNotFoundError, match="no offline W&B run"):
        track.history_from_wandb(tmp_path / "empty")


# ------------------------------------------------------------------ latents vs factors

def factor_render(classes: np.ndarray) -> np.ndarray:
    """A 'renderer' that writes the factor classes into the image, so an encoder can read them."""
    out = np.zeros((len(classes), 64, 64), np.uint8)
    out[:, 0, :6] = classes
    return out


def factor_encoder(seed: int = 1):
    """Latent 0 = posY, 1 = noise, 2 = scale, 3 = −posX, 4 = shape, 5 = orientation, 6 = constant."""
    rng = np.random.default_rng(seed)

    def encode(images: np.ndarray) -> np.ndarray:
        c = images[:, 0, :6].astype(np.float64) / (np.array(FACTOR_SIZES) - 1).clip(1)
        noise = rng.normal(size=len(c))
        return np.stack([c[:, 5], noise, c[:, 2], -c[:, 4], c[:, 1], c[:, 3], np.full(len(c), 0.3)], axis=1)

    return encode


def test_latent_factor_table_finds_the_factor_each_latent_is_built_from():
    table = latents.latent_factor_table(factor_encoder(), render=factor_render, images_per_factor=512)
    by_latent = {row["latent"]: row for row in table}
    expected = {0: "posY", 2: "scale", 3: "posX", 4: "shape", 5: "orientation"}
    for j, factor in expected.items():
        assert by_latent[j]["factor"] == factor
        assert by_latent[j]["score"] > 0.95  # one factor explains the whole latent
        others = [s for name, s in by_latent[j]["scores"].items() if name != factor]
        assert max(others) < 0.1
    assert max(by_latent[1]["scores"].values()) < 0.15  # pure noise: explained by nothing
    assert max(by_latent[6]["scores"].values()) == 0.0 and by_latent[6]["code_std"] < 1e-9
    assert set(by_latent[0]["scores"]) == set(FACTORS)


def test_default_sample_measures_a_weak_shape_dependence_to_a_few_hundredths():
    """A code ``shape + Gaussian noise`` with η²(shape) = 0.15 exactly (uniform shapes: Var = 2/3),
    as in the trained models' size latents: the default sample reads it within ± 0.035 rms over ten
    draws, at most half the error of 96 images (32 per shape)."""
    eta2 = 0.15
    sigma = np.sqrt(2 / 3 * (1 - eta2) / eta2)

    def rms_error(images_per_factor: int) -> float:
        errors = []
        for seed in range(10):
            rng = np.random.default_rng(100 + seed)
            encode = lambda images: (images[:, 0, 1] + sigma * rng.normal(size=len(images)))[:, None]  # noqa: E731
            codes = latents.factor_codes(encode, render=factor_render, images_per_factor=images_per_factor, seed=seed)
            errors.append(latents.factor_scores(codes)["shape"][0] - eta2)
        return float(np.sqrt(np.mean(np.square(errors))))

    default = rms_error(latents.FACTOR_IMAGES)
    assert default < 0.035
    assert default < 0.5 * rms_error(96)


def test_latent_factor_table_orders_by_kl_and_marks_active_latents():
    kl = np.array([3.0, 0.01, 6.0, 2.0, 1.0, 0.5, 0.0])
    table = latents.latent_factor_table(factor_encoder(), render=factor_render, images_per_factor=256, kl=kl)
    assert [row["latent"] for row in table] == [2, 0, 3, 4, 5, 1, 6]
    assert [row["active"] for row in table] == [True, True, True, True, False, False, False]


def test_latent_factor_table_on_rendered_sprites_with_a_geometric_encoder():
    """Centroid column / row and ink area of real renders encode posX / posY / scale."""
    def encode(images: np.ndarray) -> np.ndarray:
        ink = images.astype(np.float64)
        area = ink.sum(axis=(1, 2))
        grid = np.arange(64, dtype=np.float64)
        col = (ink.sum(axis=1) * grid).sum(axis=1) / area
        row = (ink.sum(axis=2) * grid).sum(axis=1) / area
        return np.stack([row, area, col], axis=1)

    table = latents.latent_factor_table(encode, images_per_factor=256)
    assert [r["factor"] for r in table] == ["posY", "scale", "posX"]
    assert min(r["score"] for r in table) > 0.6


def test_latent_factor_figure_has_one_axes_per_latent_and_factor():
    codes = latents.factor_codes(factor_encoder(), render=factor_render, images_per_factor=128)
    per_value = {"shape": 43, "scale": 22, "orientation": 4, "posX": 4, "posY": 4}  # ⌈128 / values⌉
    assert {name: c.shape for name, c in codes.items()} == {
        name: (FACTOR_SIZES[FACTOR_NAMES.index(name)], per_value[name], 7) for name in FACTORS}
    kl = np.arange(7, dtype=float)
    fig = viz.latent_factor_figure(codes, kl)
    assert len(fig.axes) == 7 * 5
    assert [ax.get_title() for ax in fig.axes[:5]] == list(FACTORS)
    assert fig.axes[0].get_ylabel().startswith("z6\n")  # largest KL first
    assert fig.axes[5 * 6].get_ylabel().startswith("z0\n")


# ------------------------------------------------------------------ a real run

def test_wandb_history_matches_the_jsonl_log(smoke_run):
    local = track.load_history(smoke_run, "jsonl")
    remote = track.history_from_wandb(smoke_run)
    assert remote, "no history read back from the offline W&B run"
    for key in ("train/loss", "train/C", "val/kl", "train/kl_dim/0"):
        steps_l, values_l = latents.series(local, key)
        steps_r, values_r = latents.series(remote, key)
        np.testing.assert_array_equal(steps_l, steps_r)
        np.testing.assert_allclose(values_l, values_r, rtol=1e-6)


def test_write_run_plots_writes_every_figure(smoke_run):
    paths = plots.write_run_plots(smoke_run, images_per_factor=256)
    names = {p.name for p in paths}
    assert names == {"reconstructions.png", "traversals.png", "traversals.gif", "kl_emergence.png",
                     "loss_curves.png", "information.png", "latent_factors.png", "latents.json"}
    for path in paths:
        assert path.parent == smoke_run / "plots" and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((smoke_run / "plots" / "latents.json").read_text())
    z_dim = latents.n_latents(read_jsonl(smoke_run / "metrics.jsonl"))
    assert sorted(r["latent"] for r in summary["factor_table"]) == list(range(z_dim))
    assert summary["images"].startswith("validation fold")
    cfg = load_model(smoke_run / "checkpoint.pt")[1]
    rows = read_jsonl(smoke_run / "metrics.jsonl")
    assert {k: summary[k] for k in ("switch_on_after", "switch_on_order")} == latents.switch_on_summary(rows, cfg.loss)


def test_display_sample_shows_the_dataset_not_the_first_sorted_rows():
    from bcvae.data import all_latents_classes

    factors = all_latents_classes()[::7]                 # sorted by factors, like a stored fold
    shown = viz.display_sample(factors, 8, seed=0)
    f = factors[shown]
    assert len(set(shown.tolist())) == 8
    assert set(f[:, 1]) == {0, 1, 2}                     # every shape
    assert len(set(f[:, 2])) >= 4 and len(set(f[:, 3])) >= 6   # scales and orientations spread
    assert np.ptp(f[:, 4]) >= 16 and np.ptp(f[:, 5]) >= 16     # positions spread over the image
    assert abs(f[0, 4] - 15.5) <= 4 and abs(f[0, 5] - 15.5) <= 4   # the traversal base is central
    np.testing.assert_array_equal(viz.display_sample(factors, 8, seed=0), shown)
    assert not np.array_equal(np.arange(8), shown)

"""The best reconstruction given a subset of the factors (bcvae.factor_costs), against a toy grid
worked by hand, a brute-force group-by over real dSprites renders, and torch's Bernoulli entropy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from bcvae.data import render_dsprites
from bcvae.data.render import FACTOR_NAMES, FACTOR_SIZES
from bcvae.errors import UsageError
from bcvae.factor_costs import (binary_entropy, greedy_order, lower_hull, main, report, subset_nll,
                                to_json, value)


def toy_render(classes):
    """Factor 1 (2 values) lights pixel 0 at value 1; factor 2 (3 values) lights pixel 1 at value 0
    and pixel 2 otherwise; pixel 3 is always off."""
    out = np.zeros((len(classes), 2, 2), np.uint8)
    out[:, 0, 0] = classes[:, 1] == 1
    out[:, 0, 1] = classes[:, 2] == 0
    out[:, 1, 0] = classes[:, 2] >= 1
    return out


def test_binary_entropy_matches_torch_bernoulli():
    p = np.array([0.0, 1e-9, 0.1, 0.5, 0.9, 1.0])
    expected = torch.distributions.Bernoulli(probs=torch.tensor(p)).entropy().numpy()
    assert binary_entropy(p) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("inner", [1, 2, 3])
def test_toy_grid_by_hand(inner):
    table = subset_nll(toy_render, (1, 2, 3), inner=inner, by=1)
    h3 = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))      # H_b(1/3) = H_b(2/3)
    assert table[frozenset()]["nll"] == pytest.approx(math.log(2) + 2 * h3)
    assert table[frozenset({1})]["nll"] == pytest.approx(2 * h3)     # pixel 0 known; pixels 1, 2 at 1/3, 2/3
    assert table[frozenset({2})]["nll"] == pytest.approx(math.log(2))
    assert table[frozenset({1, 2})]["nll"] == 0.0
    assert table[frozenset({1})]["by"] == pytest.approx([2 * h3, 2 * h3])
    assert table[frozenset()]["by"] is None
    assert set(table) == {frozenset(), frozenset({1}), frozenset({2}), frozenset({1, 2})}   # size-1 factor 0 left out


# A sub-grid of dSprites: every shape, two scales, three turns, three columns, two rows.
SUB = [[0], [0, 1, 2], [0, 5], [0, 7, 20], [0, 15, 31], [3, 4]]


def sub_render(classes):
    return render_dsprites(np.stack([np.asarray(SUB[f])[classes[:, f]] for f in range(6)], axis=1))


def brute_force(known):
    """Render the sub-grid, group the images by their known classes, and score each group's mean."""
    classes = np.array(list(itertools.product(*[range(len(v)) for v in SUB])))
    images = sub_render(classes).reshape(len(classes), -1).astype(np.float64)
    keys = classes[:, sorted(known)] if known else np.zeros((len(classes), 1), int)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
    nll = 0.0
    for g in np.unique(group):
        members = images[group == g]
        nll += len(members) * binary_entropy(members.mean(axis=0)).sum()
    return nll / len(classes)


@pytest.fixture(scope="module")
def sub_table():
    return subset_nll(sub_render, [len(v) for v in SUB])


def test_dsprites_subgrid_matches_a_brute_force_group_by(sub_table):
    for known in [(), (1,), (4,), (3, 5), (1, 2, 3), (2, 3, 4, 5), (1, 3, 4, 5)]:
        assert sub_table[frozenset(known)]["nll"] == pytest.approx(brute_force(known), rel=1e-12), known


def test_knowing_more_never_costs_reconstruction(sub_table):
    for s in sub_table:
        for f in set(range(1, 6)) - s:
            assert value(sub_table, f, s) >= -1e-9, (s, f)


def test_by_shape_averages_to_the_whole(sub_table):
    for s, row in sub_table.items():
        if row["by"] is not None:
            assert np.mean(row["by"]) == pytest.approx(row["nll"], rel=1e-12)


def additive_table(weights):
    """A dSprites-shaped table where not knowing factor f costs weights[f] nats, independently."""
    varying = [f for f, size in enumerate(FACTOR_SIZES) if size > 1]
    table = {}
    for k in range(len(varying) + 1):
        for s in map(frozenset, itertools.combinations(varying, k)):
            nll = float(sum(weights[f] for f in varying if f not in s))
            table[s] = {"nll": nll, "by": [nll] * 3 if 1 in s else None}
    return table


def test_greedy_and_hull_follow_saving_per_nat():
    # per nat: shape 30/ln3 = 27.3, scale 10/ln6 = 5.6, orientation 40/ln40 = 10.8, posX 100/ln32 = 28.9, posY 50/ln32 = 14.4
    weights = {1: 30.0, 2: 10.0, 3: 40.0, 4: 100.0, 5: 50.0}
    table = additive_table(weights)
    order = [FACTOR_NAMES[step["factor"]] for step in greedy_order(table)]
    assert order == ["posX", "shape", "posY", "orientation", "scale"]
    assert greedy_order(table)[0]["saved_per_nat"] == pytest.approx(100 / math.log(32))
    hull = lower_hull(table)
    # with independent costs the frontier is the greedy path's prefixes
    assert [sorted(s) for s in hull] == [[], [4], [1, 4], [1, 4, 5], [1, 3, 4, 5], [1, 2, 3, 4, 5]]
    text = report(table)
    assert "| 1 | posX |" in text and "| 5 | scale |" in text
    assert to_json(table)["subsets"][0] == {"known": [], "code_nats": 0.0, "nll": 230.0}


def test_bad_arguments_give_one_line():
    with pytest.raises(ValueError, match="inner must be"):
        subset_nll(toy_render, (1, 2, 3), inner=4)
    with pytest.raises(UsageError, match="bcvae factor-costs: unrecognized arguments: --images 3"):
        main(["--images", "3"])

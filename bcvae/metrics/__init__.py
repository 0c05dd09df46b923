"""Disentanglement metrics on dSprites: BetaVAE, FactorVAE, MIG, DCI and SAP.

Each metric follows its paper and, for every choice a paper leaves open
(sample sizes, bins, classifiers, how ties and empty cases are scored), the
implementation in disentanglement_lib (Locatello et al. 2019, "Challenging
Common Assumptions in the Unsupervised Learning of Disentangled
Representations"), so the numbers are comparable with that study. Sampling,
rendering and encoding are vectorised; every dSprites image is encoded at
most once per evaluation (:class:`CodeSource`).

One file per metric family, all names importable from here: ``_mig.py`` (MIG, and
Chen et al.'s MIG over every posterior), ``_sap.py``, ``_dci.py``, ``_beta_vae.py``,
``_factor_vae.py``; ``_codes.py`` holds the sampling, the code cache and the input
checks they share, ``_evaluate.py`` the one call that computes and records them all.

Two kinds of input:

* ``mig``, ``sap``, ``dci`` take codes ``(N, D)`` float and ground-truth
  factor classes ``(N, K)`` int. Factor columns holding a single value
  (dSprites' color) carry no information and are left out, as in
  disentanglement_lib, whose dSprites sampler never returns color.
* ``beta_vae_score``, ``factor_vae_score`` sample dSprites themselves:
  ``encode`` maps uint8 images ``(B, 64, 64)`` to codes ``(B, D)`` and
  ``render`` maps latent classes ``(B, 6)`` to images (the procedural
  renderer by default), or ``codes_table`` gives the codes of all 737,280
  images in the real file's order.

Which factors count: by default all five that vary (shape, scale,
orientation, posX, posY) -- disentanglement_lib's ``dsprites_full``. Every
non-counted factor is still sampled at random, as there. Random draws differ
from disentanglement_lib's (one numpy Generator, all draws at once), not
their distribution.

Where this module departs from, or pins down, disentanglement_lib:

* DCI defaults to disentanglement_lib's boosting grown on histogram trees
  with one-vs-rest bins (``model="hist"``, within 0.01 and over 10x faster);
  ``model="gbt"`` is disentanglement_lib's exact
  ``GradientBoostingClassifier()`` (about 4 minutes at the defaults).
* FactorVAE prunes dimensions whose standard deviation (not variance) is
  below 0.05, as disentanglement_lib's ``prune_dims`` does.
* BetaVAE's ``LogisticRegression()`` takes the installed scikit-learn's
  defaults, as disentanglement_lib's call does (lbfgs, multinomial today;
  liblinear one-vs-rest in the scikit-learn of 2019 -- 0.6 points apart on
  a test representation). The version is recorded with every result.

Known properties of the metrics themselves, not of this code:

* SAP on discrete factors scores a perfect representation well below 1: a
  one-dimensional linear one-vs-rest SVM cannot separate 40 orientations,
  and a code unrelated to a uniform factor still scores 1/|V| accuracy.
* MIG with 20 histogram bins cannot reach 1 for factors with more than 20
  values: a perfect code of orientation (40 values) or position (32) keeps
  log(20)/log(40) = 0.81 and 0.85 of the factor entropy; nor is it invariant
  to monotone rescaling of a code.
* No encoder of images can match the ground truth on orientation:
  orientations 0 and 2 pi give the same image, squares repeat every quarter
  turn and ellipses every half turn.
"""

from bcvae.data.render import render_dsprites
from bcvae.metrics._beta_vae import beta_vae_details, beta_vae_score
from bcvae.metrics._codes import (
    DEFAULT_FACTORS, CodeSource, Encode, Render, factor_columns, sample_factors,
)
from bcvae.metrics._dci import dci, dci_scores
from bcvae.metrics._evaluate import METRICS, evaluate
from bcvae.metrics._factor_vae import factor_vae_details, factor_vae_score
from bcvae.metrics._mig import (
    CHEN_FACTORS, discrete_mutual_info, discretize, latent_information, mig, mig_full_grid, mig_per_factor,
)
from bcvae.metrics._sap import sap

__all__ = [
    "CHEN_FACTORS", "CodeSource", "DEFAULT_FACTORS", "Encode", "METRICS", "Render", "beta_vae_details",
    "beta_vae_score", "dci", "dci_scores", "discrete_mutual_info", "discretize", "evaluate",
    "factor_columns", "factor_vae_details", "factor_vae_score", "latent_information", "mig", "mig_full_grid",
    "mig_per_factor", "render_dsprites", "sample_factors", "sap",
]

"""Student-teacher anomaly detection: the student-teacher part of EfficientAD, without its
autoencoder.

Batzner, Heckler and Koenig, "EfficientAD: Accurate Visual Anomaly Detection at
Millisecond-Level Latencies", WACV 2024 (arXiv:2303.14535), its student-teacher part (Sec. 3.2);
as CLAD runs it (Pezze et al., "Continual learning approaches for anomaly detection",
github.com/dallepezze/clad, ``src/models/st.py``, ``src/trainer/trainer_st.py``).

A frozen teacher ``T`` (PDN-small, ``C`` output channels, normalised per channel by its mean and
std over the training images) and a student ``S`` of the same architecture with ``C`` outputs
(EfficientAD's has ``2C``: the second half imitates the autoencoder), both reading the
ImageNet-normalised image ``I``:

    D = (T(I) - S(I))^2,   d_hard = quantile(D, 0.999),   L_hard = mean(D[D >= d_hard])
    loss = L_hard + mean(S(P)^2)               (P: an ImageNet image; the penalty, when on)

The anomaly map is ``M_ST = mean_c (T - S)^2``, mapped with the quantiles of its values on the
validation images, ``M <- 0.1 (M - q_a) / (q_b - q_a)`` (``q_a = q(0.9)``, ``q_b = q(0.995)``),
resized to the input; the image score is its maximum.

Everything else is ``efficientad``'s (``clad.models.efficientad``), parameters and defaults
included: the teacher loaded from ``teacher_weights`` or distilled on the fly, the teacher
statistics and map quantiles recomputed at every ``fit``, the penalty images, the padding and
border options, Adam with weight decay and the x0.1 learning-rate drop at 95 % of the epochs;
its module docstring lists how those differ from the paper. Differences from CLAD's ``st``:
- Teacher: CLAD loads the reference code's pretrained ``teacher_small.pth``; here that file
  works through ``teacher_weights`` (converted to a state dict), and without it the teacher is
  distilled on the fly (see ``efficientad``).
- Schedule: CLAD's trainer keeps Adam's learning rate constant (its step scheduler is commented
  out); here it drops x0.1 at 95 % of the epochs (as ``efficientad``'s), and the shared loop's
  early stopping watches ``L_hard`` on the validation images (no penalty).
- Padding: CLAD uses the paper's unpadded PDN; here ``padding=True`` is the default (as
  ``efficientad``'s, so small inputs keep a usable map); the real-protocol configs set
  ``padding=False``.
"""

from __future__ import annotations

from typing import ClassVar

from clad.models.efficientad import EfficientAD
from clad.registry import register_detector


@register_detector("st")
class StudentTeacher(EfficientAD):
    """EfficientAD's student-teacher part alone (no autoencoder; a student with ``C`` outputs,
    the map ``M_ST``); see the module docstring. Arguments and defaults are ``efficientad``'s."""

    with_autoencoder: ClassVar[bool] = False

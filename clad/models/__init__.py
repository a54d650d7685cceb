"""Detectors; importing this package fills the detector registry (one import per module)."""

from clad.models import (  # noqa: F401
    aegan,
    ast,
    autoencoder,
    cfa,
    dcase_ae,
    dne,
    draem,
    efficientad,
    fastflow,
    padim,
    patchcore,
    pix2pix_inpaint,
    pix2pix_scaling,
    rdna,
    st,
    stfpm,
    ucad,
    vae,
)
from clad.models.base import Detector

__all__ = ["Detector"]

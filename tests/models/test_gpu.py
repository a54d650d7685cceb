"""The GPU paths: faiss on GPU against torch search, the dense coreset on CUDA against the CPU
rule, one epoch of every trained detector under its precision, and seeded determinism on CUDA.
The CUDA tests skip with their reason where there is no GPU; the precision policy itself is
tested on the CPU too. ``python -m clad.perf gpu-check`` runs these with the GPU benchmarks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import clad.models  # noqa: F401  (fills the detector table)
from clad.models.base import training_for
from clad.models.components.coreset import greedy_coreset
from clad.models.components.knn import KnnIndex, faiss_module
from clad.models.components.precision import Scalers, autocast
from clad.registry import detector_table
from tests.models.test_contract import TINY, tiny_training

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")
TRAINED = (
    "conv_ae",
    "unet_ae",
    "stfpm",
    "fastflow",
    "cfa",
    "efficientad",
    "draem",
    "rdna",
    "ast",
    "pix2pix_inpaint",
)
SIZE = 64


def images(n: int, seed: int) -> TensorDataset:
    x = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return TensorDataset(x, torch.zeros(n, 1, SIZE, SIZE), torch.zeros(n).long())


# ----------------------------------------------------------------------------- on any machine


def test_precision_defaults_follow_each_detectors_needs():
    table = detector_table()
    assert table["fastflow"].training_defaults.precision == "fp32"
    assert table["ast"].training_defaults.precision == "fp32"
    assert table["aegan"].training_defaults.precision == "fp32"
    assert table["stfpm"].training_defaults.precision == "bf16"
    conv_ae = table["conv_ae"]
    detector = conv_ae(training=training_for(conv_ae, epochs=1, device="cpu", precision="fp16"))
    assert detector.precision == "fp16" and not detector.scalers.enabled  # CPU: no scaling


def test_cpu_autocast_is_a_no_op_and_each_optimiser_has_its_own_scaler():
    cpu = torch.device("cpu")
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    scalers = Scalers(cpu, "fp16")
    weights = [torch.nn.Parameter(torch.ones(2)) for _ in range(2)]
    optimisers = [torch.optim.SGD([w], lr=0.1) for w in weights]
    for optimiser, w in zip(optimisers, weights):
        scalers.step((w**2).sum(), optimiser)
    assert len(scalers.scalers) == 2  # one per optimiser: each step updates only its own


# ----------------------------------------------------------------------------- CUDA only


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(
    faiss_module() is None or not hasattr(faiss_module(), "StandardGpuResources"),
    reason="faiss without GPU support (pip install faiss-gpu)",
)
def test_faiss_gpu_index_equals_torch_search():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(5000, 64, generator=g), torch.randn(300, 64, generator=g)
    gpu = KnnIndex(bank.cuda(), backend="faiss")
    reference = KnnIndex(bank, backend="torch")
    d_gpu, i_gpu = gpu.search(queries.cuda(), 3)
    d_ref, i_ref = reference.search(queries, 3)
    torch.testing.assert_close(d_gpu.cpu(), d_ref, rtol=1e-4, atol=1e-4)
    assert (i_gpu.cpu() == i_ref).float().mean() > 0.999  # up to float near-ties


@pytest.mark.gpu
@needs_cuda
def test_dense_coreset_on_cuda_equals_the_cpu_rule():
    features = torch.randn(4000, 32, generator=torch.Generator().manual_seed(0))
    cpu = greedy_coreset(features, 200, start=0, method="dense")
    cuda = greedy_coreset(features.cuda(), 200, start=0, method="dense").cpu()
    assert (cpu == cuda).float().mean() > 0.98  # picks agree up to float near-ties


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", TRAINED)
def test_one_epoch_of_every_trained_detector_gives_finite_losses(name):
    torch.manual_seed(0)
    training = tiny_training(name, device="cuda", batch_size=4, epochs=1, patience=0)
    detector = detector_table()[name](**TINY[name], training=training)
    detector.fit(images(8, 0))
    assert all(
        torch.isfinite(torch.tensor(v)) for k, v in detector.history[-1].items() if k != "epoch"
    )
    scores = detector.predict(images(2, 1).tensors[0])
    assert torch.isfinite(scores.image).all()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", ["stfpm", "patchcore"])
def test_the_same_seed_gives_the_same_numbers_on_cuda(name):
    from clad.seeding import seed_everything, set_deterministic

    results = []
    for _ in range(2):
        seed_everything(0)
        set_deterministic(True)
        training = tiny_training(name, device="cuda", batch_size=4)
        detector = detector_table()[name](**TINY[name], training=training)
        detector.fit(images(8, 0))
        results.append(detector.predict(images(2, 1).tensors[0]))
    torch.testing.assert_close(results[0].image, results[1].image)
    torch.testing.assert_close(results[0].pixel, results[1].pixel)

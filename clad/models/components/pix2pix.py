"""pix2pix networks, losses and the image operations of CLAD's two pix2pix models.

pix2pix (Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks", CVPR
2017) as CLAD runs it: CLAD vendors junyanz/pytorch-CycleGAN-and-pix2pix (``pytorch_pix2pix/``)
and builds the model in ``src/models/pix2pix_model.py`` (``create_pix2pix_model``) with
``--model pix2pix --netD pixel``: a U-Net-256 generator (``unet_256``, ``ngf`` 64, batch norm,
dropout 0.5), a 1x1 PixelGAN discriminator (``ndf`` 64), the vanilla (cross-entropy) GAN loss,
``lambda_L1`` 100, Adam at 2e-4 with betas (0.5, 0.999) for both networks, weights from
N(0, 0.02) (norm scales from N(1, 0.02)). CLAD's ``configurations/models/pix2pix*.json`` keys
``netG``, ``norm`` and ``lambda_L1`` are not read by that constructor (its options come from a
fixed argument list), so the values above are what runs.

One step (``pix2pix_step``, pytorch_pix2pix ``Pix2PixModel.optimize_parameters``) on inputs ``A``
and targets ``B`` [B, C, H, W] in [-1, 1], with ``F = G(A)`` and ``g`` the binary cross-entropy
of the critic's logits against a label:

    L_D = 1/2 [g(D([A, F.detach()]), 0) + g(D([A, B]), 1)]      (one Adam step on D)
    L_G = g(D([A, F]), 1) + lambda_L1 * mean |F - B|             (one Adam step on G)

Where this differs from CLAD's networks:
- Normalisation: CLAD's networks use batch norm, always in training mode (CLAD never calls
  ``eval()``) on batches of one image; batch norm over one image is a per-image, per-channel
  normalisation with a learnt scale and shift, i.e. ``InstanceNorm2d(affine=True)``, which is
  what is used here, in training and at test alike. Scores then do not depend on the batch and
  no running statistics are kept (CLAD's are updated by every test image and never used).
- Dropout: CLAD's generator keeps dropout on at test time (training mode, as the pix2pix paper
  does to add noise); here ``predict`` runs in eval mode without dropout, so scores are
  deterministic.
- ``depth`` generalises ``unet_256`` (depth 8; ``unet_128`` is 7): level i of d has
  ``ngf * min(2^i, 8)`` channels, dropout on the 8·ngf levels between the 8x level and the
  innermost one (levels 4 .. d-2, as pix2pix's ``num_downs - 5`` intermediate blocks).
- ``disc_layers = 0`` is CLAD's PixelGAN; n > 0 is pix2pix's n-layer PatchGAN (3: its default
  70x70 ``basic`` critic), which CLAD does not use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clad.models.components.ssim import gaussian_smooth

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASKS_PER_GRID = 3
"""CLAD's ``gen_mask(k_list, n=3, im_size)``: the grid's cells are split into three groups."""
MSGMS_SCALES = 4
"""CLAD's ``MSGMS_Score``: the full image and three 2x average-pooled copies."""
GMS_C = 0.0026
"""The stabilising constant of CLAD's gradient magnitude similarity (``GMS(..., c=0.0026)``)."""


def norm_layer(channels: int) -> nn.Module:
    """Per-image, per-channel normalisation with a learnt scale and shift: CLAD's batch norm on
    batches of one image (see the module docstring)."""
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


def pix2pix_init(module: nn.Module) -> None:
    """pix2pix's ``init_weights(init_type="normal", init_gain=0.02)``: conv weights
    N(0, 0.02), biases 0, normalisation scales N(1, 0.02) and shifts 0. Use with ``apply``."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.InstanceNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class UnetBlock(nn.Module):
    """One level of the U-Net (pytorch_pix2pix ``UnetSkipConnectionBlock``): [B, outer, H, W]
    -> [B, 2 * outer, H, W] (input and output concatenated), or [B, out, H, W] outermost.

    down: LeakyReLU(0.2) (not outermost), 4x4 stride-2 conv to ``inner`` channels, norm (not
    innermost, not outermost); the inner level; up: ReLU, 4x4 stride-2 transposed conv to
    ``outer`` channels, then norm (Tanh outermost), dropout 0.5 if ``dropout``."""

    def __init__(
        self,
        outer: int,
        inner: int,
        inner_level: nn.Module | None,
        in_channels: int | None = None,
        dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = in_channels is not None
        innermost = inner_level is None
        down_in = in_channels if in_channels is not None else outer
        down: list[nn.Module] = [] if self.outermost else [nn.LeakyReLU(0.2)]
        # no conv bias but the outermost up-conv's (pix2pix with batch norm: ``use_bias`` False)
        down.append(nn.Conv2d(down_in, inner, 4, stride=2, padding=1, bias=False))
        if not (self.outermost or innermost):
            down.append(norm_layer(inner))
        up_in = inner if innermost else 2 * inner
        up: list[nn.Module] = [
            nn.ReLU(),
            nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1, bias=self.outermost),
        ]
        up.append(nn.Tanh() if self.outermost else norm_layer(outer))
        if dropout:
            up.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*down, *([inner_level] if inner_level else []), *up)

    def forward(self, x: Tensor) -> Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


class UnetGenerator(nn.Module):
    """pix2pix's U-Net generator: [B, in, H, W] in [-1, 1] -> [B, out, H, W] in [-1, 1]
    (Tanh); needs H and W divisible by ``2**depth`` (the bottleneck is [H / 2^depth]).

    Level i (0 outermost, depth-1 innermost) convolves to ``ngf * min(2^i, 8)`` channels;
    ``dropout`` puts dropout 0.5 after the up path of levels 4 .. depth-2 (``unet_256``:
    depth 8, three such levels). ``unet_256`` at ``ngf`` 64 has 54,413,955 parameters."""

    def __init__(
        self, in_channels: int, out_channels: int, ngf: int, depth: int, dropout: bool
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth: the U-Net needs at least 2 levels, got {depth}")
        self.depth = depth
        widths = [ngf * min(2**level, 8) for level in range(depth)]
        level: nn.Module | None = None
        for i in range(depth - 1, 0, -1):  # innermost first
            level = UnetBlock(
                widths[i - 1], widths[i], level, dropout=dropout and 4 <= i < depth - 1
            )
        self.model = UnetBlock(out_channels, widths[0], level, in_channels=in_channels)
        self.apply(pix2pix_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """pix2pix's 1x1 PixelGAN critic (CLAD's ``--netD pixel``): [B, C, H, W] -> logits
    [B, 1, H, W], one per pixel: 1x1 conv to ``ndf`` + LeakyReLU(0.2), 1x1 conv to ``2 ndf``
    (no bias) + norm + LeakyReLU(0.2), 1x1 conv to 1 (no bias)."""

    def __init__(self, in_channels: int, ndf: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, ndf, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf, 2 * ndf, 1, bias=False),
            norm_layer(2 * ndf),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * ndf, 1, 1, bias=False),
        )
        self.apply(pix2pix_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """pix2pix's n-layer PatchGAN critic (``NLayerDiscriminator``): [B, C, H, W] -> logits
    [B, 1, H / 2^layers - 2, W / 2^layers - 2], one per overlapping patch (70 x 70 pixels at
    ``layers`` 3). A 4x4 stride-2 conv to ``ndf`` + LeakyReLU(0.2); ``layers - 1`` more
    stride-2 and one stride-1 4x4 conv, widths ``ndf * min(2^n, 8)``, each with norm +
    LeakyReLU(0.2); a stride-1 4x4 conv to 1. Needs sides of at least ``3 * 2^layers``."""

    def __init__(self, in_channels: int, ndf: int, layers: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        channels = ndf
        for n in range(1, layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < layers else 1
            blocks += [
                nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False),
                norm_layer(out),
                nn.LeakyReLU(0.2),
            ]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*blocks)
        self.apply(pix2pix_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def discriminator_min_side(disc_layers: int) -> int:
    """The smallest image side the critic takes: 1 for the PixelGAN, ``3 * 2^layers`` for an
    n-layer PatchGAN (at least one logit)."""
    return 1 if disc_layers == 0 else 3 * 2**disc_layers


class Pix2Pix(nn.Module):
    """A conditional GAN: ``generator`` [B, C, H, W] -> [B, C, H, W] and a critic of
    (input, output) pairs ``discriminator([A, B])``, [B, 2C, H, W] -> logits."""

    def __init__(
        self, channels: int, ngf: int, ndf: int, depth: int, disc_layers: int, dropout: bool
    ) -> None:
        super().__init__()
        self.generator = UnetGenerator(channels, channels, ngf, depth, dropout)
        self.discriminator: nn.Module = (
            PixelDiscriminator(2 * channels, ndf)
            if disc_layers == 0
            else PatchDiscriminator(2 * channels, ndf, disc_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.generator(x)

    def optimizers(
        self, lr: float, betas: tuple[float, float]
    ) -> tuple[torch.optim.Adam, torch.optim.Adam]:
        """(generator's Adam, discriminator's Adam), as pix2pix's ``optimizer_G``/``_D``."""
        return (
            torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas),
        )


def gan_loss(logits: Tensor, real: bool) -> Tensor:
    """pix2pix's vanilla ``GANLoss``: mean binary cross-entropy of the logits against the label
    1 (``real``) or 0."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))


def discriminator_loss(net: Pix2Pix, inputs: Tensor, fakes: Tensor, targets: Tensor) -> Tensor:
    """L_D = 1/2 [g(D([A, F]), 0) + g(D([A, B]), 1)], ``fakes`` detached."""
    fake = net.discriminator(torch.cat([inputs, fakes.detach()], dim=1))
    real = net.discriminator(torch.cat([inputs, targets], dim=1))
    return 0.5 * (gan_loss(fake, False) + gan_loss(real, True))


def generator_loss(
    net: Pix2Pix, inputs: Tensor, fakes: Tensor, targets: Tensor, l1_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(L_G, its GAN term g(D([A, F]), 1), its mean |F - B|): L_G = GAN + l1_weight * L1."""
    adversarial = gan_loss(net.discriminator(torch.cat([inputs, fakes], dim=1)), True)
    l1 = (fakes.float() - targets.float()).abs().mean()
    return adversarial + l1_weight * l1, adversarial, l1


Backward = Callable[[Tensor, torch.optim.Optimizer], None]


def plain_backward(loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
    """Zero the gradients, back-propagate and step (float32, no scaler)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def pix2pix_step(
    net: Pix2Pix,
    inputs: Tensor,
    targets: Tensor,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    l1_weight: float,
    backward: Backward = plain_backward,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """One pix2pix update (``optimize_parameters``): the critic's step on L_D, then the
    generator's on L_G (the critic frozen). ``inputs`` A and ``targets`` B: [B, C, H, W] in
    [-1, 1]; ``backward(loss, optimizer)`` does the step (a detector's ``backward_step`` for
    mixed precision); ``autocast()`` wraps the forward passes.

    Returns:
        (the generator's outputs F before the step, detached [B, C, H, W]; the floats
        ``loss`` (L_G), ``gan``, ``l1`` and ``disc`` (L_D)).
    """
    generator_opt, discriminator_opt = optimizers
    context = autocast or contextlib.nullcontext
    with context():
        fakes = net.generator(inputs)
        disc = discriminator_loss(net, inputs, fakes, targets)
    backward(disc, discriminator_opt)
    net.discriminator.requires_grad_(False)
    try:
        with context():
            loss, adversarial, l1 = generator_loss(net, inputs, fakes, targets, l1_weight)
        backward(loss, generator_opt)
    finally:
        net.discriminator.requires_grad_(True)
    terms = {"loss": loss.item(), "gan": adversarial.item(), "l1": l1.item(), "disc": disc.item()}
    return fakes.detach(), terms


# ----------------------------------------------------------------------------- inpainting masks


def grid_groups(k: int, height: int, width: int, generator: torch.Generator) -> Tensor:
    """CLAD's grid masks for one k (``src/inpaint/gen_mask.py``, ``gen_mask([k], 3, size)``) as
    group labels: the image is cut into cells of k x k pixels, a random permutation of the
    (H/k)(W/k) cells is padded with -1 to a multiple of 3 and cut into three equal runs; run p
    is the cells hidden by mask p. Returns [H, W] int64: each pixel's group in {0, 1, 2} (every
    pixel in exactly one group; a group holds ceil(cells / 3) cells, the last fewer).
    CLAD's grid is square (H = W); here it is (H/k) x (W/k), cells numbered row-major as
    CLAD's ``reshape(N, N)``."""
    rows, cols = height // k, width // k
    cells = rows * cols
    run = -(-cells // MASKS_PER_GRID)  # ceil: the padded runs' length
    order = torch.randperm(cells, generator=generator)
    group = torch.empty(cells, dtype=torch.long)
    group[order] = torch.arange(cells) // run  # position in the permutation -> its run
    return group.view(rows, cols).repeat_interleave(k, dim=0).repeat_interleave(k, dim=1)


def keep_masks(groups: Tensor) -> Tensor:
    """[..., H, W] group labels -> [..., 3, H, W] float masks M_p: 1 where the pixel is kept,
    0 where mask p hides it (CLAD's ``Ms``); sum_p (1 - M_p) = 1 at every pixel."""
    labels = torch.arange(MASKS_PER_GRID, device=groups.device)
    return (groups.unsqueeze(-3) != labels[:, None, None]).float()


def merge_inpaintings(outputs: Tensor, masks: Tensor) -> Tensor:
    """CLAD's merge (``forward_k_value``: ``sum(map(lambda x, y: x * (1 - y), outputs, Ms))``):
    each pixel from the inpainting whose mask hid it. ``outputs`` [P, B, C, H, W] (one per
    mask), ``masks`` [P, B, 1, H, W] or [P, 1, 1, H, W] -> [B, C, H, W]."""
    return (outputs * (1.0 - masks)).sum(dim=0)


# ----------------------------------------------------------------------------- scoring


def imagenet_normalize(images: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> CLAD's input scale, (x - ImageNet mean) / ImageNet std."""
    mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = images.new_tensor(IMAGENET_STD)[:, None, None]
    return (images - mean) / std


def _prewitt_magnitude(x: Tensor) -> Tensor:
    """CLAD's ``Prewitt``: [B, 1, H, W] -> gradient magnitude [B, 1, H - 2, W - 2] with the
    kernels [[-1, 0, 1]] x 3 / 3 and its transpose flipped ([[1, 1, 1], 0, -1] / 3), no padding."""
    gx = x.new_tensor([[-1.0, 0.0, 1.0]] * 3) / 3
    gy = x.new_tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]]) / 3
    grads = F.conv2d(x, torch.stack([gx, gy])[:, None])  # [B, 2, H-2, W-2]
    return grads.pow(2).sum(dim=1, keepdim=True).sqrt()


def gms_map(x: Tensor, y: Tensor, c: float = GMS_C) -> Tensor:
    """CLAD's ``GMS`` (``src/inpaint/gms_loss.py``): on the channel means of ``x`` and ``y``
    [B, C, H, W], each 3x3-median-filtered (zero padding, as CLAD's kornia ``MedianBlur``) and
    Prewitt-differentiated to g_x, g_y: (2 g_x g_y + c) / (g_x^2 + g_y^2 + c), [B, 1, H-2, W-2]
    in (0, 1], 1 where the gradients agree."""
    grads = []
    for image in (x, y):
        mean = image.float().mean(dim=1, keepdim=True)
        grads.append(_prewitt_magnitude(kornia.filters.median_blur(mean, 3, "constant")))
    gx, gy = grads
    return (2 * gx * gy + c) / (gx.pow(2) + gy.pow(2) + c)


def msgms_map(x: Tensor, y: Tensor) -> Tensor:
    """Multi-scale GMS distance (CLAD's ``MSGMS_Score``): GMS of ``x`` and ``y`` [B, C, H, W]
    at the full size and after 1, 2, 3 2x average poolings, each resized to [H, W] (bilinear,
    ``align_corners=False``), averaged: 1 - (1/4) sum_s GMS_s, [B, H, W] in [0, 1).
    CLAD returns (1 - sum_s GMS_s) / 4, which is this minus the constant 3/4 (the same order).
    Needs sides of at least 24 (the coarsest scale is H/8, and Prewitt takes 2 pixels)."""
    size = x.shape[-2:]
    total = x.new_zeros((x.shape[0], 1, *size), dtype=torch.float32)
    for scale in range(MSGMS_SCALES):
        if scale:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        total += F.interpolate(gms_map(x, y), size=size, mode="bilinear", align_corners=False)
    return 1.0 - total[:, 0] / MSGMS_SCALES


def smoothed_max(maps: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """CLAD's map and image score (``evaluate_data_pix2pix_inpaint``, ``test_results``):
    the maps [B, H, W] Gaussian-blurred with ``sigma`` (CLAD: scipy ``gaussian_filter``, sigma 7)
    and each blurred map's maximum [B]."""
    blurred = gaussian_smooth(maps, sigma)
    return blurred, blurred.flatten(1).amax(dim=1)


# ----------------------------------------------------------------------------- 32 x 32 storage


def downscale(images: Tensor, side: int) -> Tensor:
    """[B, C, H, W] in [0, 1] -> uint8 [B, C, side, side]: bicubic with antialiasing, rounded
    (CLAD's ``produce_scaled_A_from_B``: PIL ``resize((32, 32), ANTIALIAS)``, Lanczos, on the
    uint8 image)."""
    small = F.interpolate(images.float(), size=(side, side), mode="bicubic", antialias=True)
    return (small.clamp(0, 1) * 255).round().to(torch.uint8)


def upscale(stored: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 [B, C, h, w] -> [B, C, H, W] in [0, 1], bicubic (CLAD resizes the 32 x 32 image back
    with PIL's Lanczos and rounds it to uint8 again; here it stays float)."""
    images = stored.float() / 255.0
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False).clamp(0, 1)

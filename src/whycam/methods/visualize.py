"""Class model visualisation (Simonyan, Vedaldi & Zisserman, ICLR workshop 2014, section 2): the
image that the model finds most typical of a class,

    I* = argmax_I  S_c(I) - lambda ||I||^2,

found by gradient ascent on the unnormalised class score S_c (the logit, not the softmax, which
could rise by lowering the other classes) from the zero image, which in the model's normalised
input space is the mean image: I <- I + lr (dS_c/dI - 2 lambda I). Optional regularisers of later
work (Yosinski et al., 2015; Mordvintsev et al., 2015): ``jitter``, a random circular shift of up to
that many pixels before each step (drawn from a generator seeded with ``seed``), and ``blur_sigma``,
a Gaussian blur every ``blur_every`` steps. With neither, the result is deterministic and, for a
linear score S_c = w.I + b, converges to I* = w / (2 lambda).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from ..taps import preserved
from ..targets import OutputSelector, Target, select_output, target_scores
from .base import positive_int


def visualize_class(
    model: nn.Module,
    target: Target,
    *,
    size: int | tuple[int, int] = 224,
    channels: int | None = None,
    steps: int = 200,
    lr: float = 0.3,
    l2: float = 0.05,
    jitter: int = 0,
    blur_sigma: float = 0.0,
    blur_every: int = 4,
    seed: int = 0,
    output: OutputSelector = None,
) -> Tensor:
    """The class model image(s) (B, C, H, W), in the model's input space (normalised as its inputs).

    ``target``: a class, a list of classes (one image each), or a callable ``output -> (B,)`` scores
    (then one image). ``size``: the input's (H, W); ``channels``: default the first convolution's
    input channels (else 3). ``lr``: the ascent step (its scale depends on the model's gradients);
    ``l2``: lambda. The model comes back as it was.
    """
    steps, blur_every = positive_int(steps, "steps"), positive_int(blur_every, "blur_every")
    if not (l2 >= 0 and lr > 0 and blur_sigma >= 0) or isinstance(jitter, bool) or jitter < 0:
        raise ValueError("need lr > 0, l2 >= 0, blur_sigma >= 0 and an integer jitter >= 0")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if channels is None:
        channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    if target is None:
        raise ValueError("visualize_class needs a class: there is no input image to predict one from")
    if not callable(target):
        target = torch.as_tensor(target).long().flatten()
    batch = 1 if callable(target) else len(target)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    if model.training:
        warnings.warn("the model is in training mode; call model.eval() first", stacklevel=2)
    generator = torch.Generator().manual_seed(seed)
    kernel = 2 * math.ceil(3 * blur_sigma) + 1
    image = torch.zeros(batch, channels, height, width, device=device, dtype=dtype)
    with preserved(model):
        for step in range(steps):
            shift = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist() if jitter else [0, 0]
            with torch.enable_grad():
                shifted = image.roll(shift, dims=(2, 3)).requires_grad_(True)
                scores, _ = target_scores(select_output(model(shifted), output), target)
                (gradient,) = torch.autograd.grad(scores.sum(), shifted)
            image = image + lr * (gradient.roll([-s for s in shift], dims=(2, 3)) - 2 * l2 * image)
            if blur_sigma > 0 and (step + 1) % blur_every == 0:
                image = gaussian_blur(image, [kernel, kernel], [blur_sigma, blur_sigma])
    return image.detach()


def displayable(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Model inputs (B, C, H, W) as pictures in [0, 1]: ``image * std + mean``, then stretched per
    image to [0, 1] by its min and max (one affine map for every channel, so colours keep their
    balance); a constant image becomes 0.5."""
    shape = (1, -1, 1, 1)
    pictures = images * torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
    pictures = pictures + torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    low = pictures.flatten(1).amin(1).view(-1, 1, 1, 1)
    span = pictures.flatten(1).amax(1).view(-1, 1, 1, 1) - low
    return torch.where(span > 0, (pictures - low) / span.clamp(min=torch.finfo(pictures.dtype).tiny), 0.5)

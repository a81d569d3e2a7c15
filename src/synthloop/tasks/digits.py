"""Denoising handwritten digits (Spend Wisely, section 5.1): data, splits, PSNR reward and the task.

Data, never downloaded: scikit-learn's bundled 8x8 digits (1,797 images) by default, or MNIST from a
file the user gives (IDX, optionally gzipped, or .npz). Images become float32 [n, C, H, W] in
[-1, 1], padded with background to ``image_size`` and repeated to ``channels`` (a 32x32 RGB
checkpoint such as ``google/ddpm-cifar10-32`` takes MNIST padded to 32 and repeated to 3 channels).
The train / held-out split is a fixed permutation from ``split_seed``.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from synthloop.diagnostics.stage import View
from synthloop.records import Candidates, Prompts, Scores

if TYPE_CHECKING:
    from synthloop.models.diffusion import DenoisingGenerator, DenoisingModel

Images = npt.NDArray[np.float32]


def load_sklearn_digits() -> npt.NDArray[np.uint8]:
    """The 1,797 8x8 digits shipped with scikit-learn, as uint8 in 0..16 -> rescaled later."""
    from sklearn.datasets import load_digits

    return np.asarray(load_digits().images, dtype=np.uint8)


def load_mnist(path: Path) -> npt.NDArray[np.uint8]:
    """MNIST images [n, 28, 28] uint8 from an IDX file (``*-idx3-ubyte``, maybe ``.gz``) or a ``.npz``.

    A ``.npz`` must hold one uint8 array [n, H, W] named ``images``, ``x_train`` or ``x``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"task.path {path}: no such file (give an MNIST IDX file or a .npz)")
    if path.suffix == ".npz":
        return _load_npz(path)
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"task.path {path}: cannot read it ({error})") from None
    if len(raw) < 16 or struct.unpack(">I", raw[:4])[0] != 0x803:
        raise ValueError(f"task.path {path}: not an IDX image file (magic 0x00000803 expected)")
    n, rows, cols = struct.unpack(">III", raw[4:16])
    if len(raw) != 16 + n * rows * cols:
        raise ValueError(f"task.path {path}: IDX header says {n}x{rows}x{cols} but the file is truncated")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols).copy()


def _load_npz(path: Path) -> npt.NDArray[np.uint8]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = [k for k in ("images", "x_train", "x") if k in archive.files]
            if not names:
                raise ValueError(f"task.path {path}: no array named images, x_train or x "
                                 f"(found {', '.join(archive.files) or 'none'})")
            images = archive[names[0]]
    except (OSError, EOFError) as error:
        raise ValueError(f"task.path {path}: not a readable .npz ({error})") from None
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"task.path {path}: expected uint8 images [n, H, W], got {images.dtype} {images.shape}")
    return images


def to_model_space(raw: npt.NDArray[np.uint8], *, peak: float, image_size: int, channels: int) -> Images:
    """uint8 [n, H, W] in 0..peak -> float32 [n, channels, image_size, image_size] in [-1, 1]."""
    n, height, width = raw.shape
    if image_size < max(height, width):
        raise ValueError(f"task.image_size {image_size} is smaller than the images ({height}x{width})")
    scaled = raw.astype(np.float32) * (2.0 / peak) - 1.0
    top, left = (image_size - height) // 2, (image_size - width) // 2
    out = np.full((n, channels, image_size, image_size), -1.0, dtype=np.float32)
    out[:, :, top:top + height, left:left + width] = scaled[:, None]
    return out


@dataclass(frozen=True)
class DigitsData:
    """Fixed train and held-out splits of one image set, in model space."""

    train: Images
    heldout: Images

    @classmethod
    def split(cls, images: Images, *, n_heldout: int, seed: int) -> DigitsData:
        if not 0 < n_heldout < len(images):
            raise ValueError(f"task.n_heldout must be in 1..{len(images) - 1}, got {n_heldout}")
        order = np.random.default_rng(seed).permutation(len(images))
        return cls(train=images[order[n_heldout:]], heldout=images[order[:n_heldout]])


def load_images(source: str, *, path: Path | None, image_size: int | None, channels: int,
                limit: int | None = None) -> Images:
    """The images of ``source`` ("digits" or "mnist") in model space."""
    if source == "digits":
        raw, peak = load_sklearn_digits(), 16.0
    elif source == "mnist":
        if path is None:
            raise ValueError("task.path: the mnist source needs a path to an IDX or .npz file")
        raw, peak = load_mnist(path), 255.0
    else:
        raise ValueError(f"task.source: unknown source {source!r}; allowed: digits, mnist")
    raw = raw if limit is None else raw[:limit]
    return to_model_space(raw, peak=peak, image_size=image_size or raw.shape[1], channels=channels)


def natural_patches(n: int, *, size: int, channels: int, downsample: int = 4, seed: int = 0) -> Images:
    """``n`` gray patches of natural photographs, in model space: a pretraining set that is not digits.

    The two photographs bundled with scikit-learn (``load_sample_images``: a building and a flower,
    427 x 640) are turned gray, shrunk by ``downsample`` (block means), and cut into random
    ``size`` x ``size`` patches; each patch is stretched to the full [-1, 1] range, and flat patches
    (under 10 gray levels of contrast) are skipped. A DDPM pretrained on them is a generic
    natural-image denoiser that has never seen a digit: the position of the paper's CIFAR-10 model
    facing MNIST.
    """
    from sklearn.datasets import load_sample_images

    gray = []
    for photo in load_sample_images().images:
        image = np.asarray(photo, dtype=np.float32).mean(axis=-1)
        h, w = image.shape[0] // downsample, image.shape[1] // downsample
        gray.append(image[:h * downsample, :w * downsample].reshape(h, downsample, w, downsample).mean(axis=(1, 3)))
    if min(min(g.shape) for g in gray) <= size:
        raise ValueError(f"model.patch_downsample {downsample} leaves photographs too small for {size}x{size} patches")
    rng = np.random.default_rng(seed)
    out = np.empty((n, channels, size, size), dtype=np.float32)
    filled = 0
    while filled < n:
        image = gray[int(rng.integers(len(gray)))]
        top, left = rng.integers(0, image.shape[0] - size), rng.integers(0, image.shape[1] - size)
        patch = image[top:top + size, left:left + size]
        low, high = float(patch.min()), float(patch.max())
        if high - low < 10.0:
            continue
        out[filled] = (patch - low) * (2.0 / (high - low)) - 1.0
        filled += 1
    return out


def psnr(images: npt.NDArray[np.floating], clean: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak range 2): 10 log10(4 / MSE)."""
    diff = np.clip(images, -1.0, 1.0).astype(np.float64) - clean.astype(np.float64)
    mse = np.mean(np.square(diff).reshape(len(diff), -1), axis=1)
    with np.errstate(divide="ignore"):
        return np.asarray(10.0 * np.log10(4.0 / mse), dtype=np.float64)


@dataclass(frozen=True)
class PSNRVerifier:
    """Reward R = clip((PSNR - lo) / (hi - lo), 0, 1) of each denoised image against its clean image.

    An oracle reward (the paper's): the clean image comes with the prompt. Verdict PASS where
    R >= 1/2. A candidate whose image is missing or not finite is an ERROR (NaN reward).
    """

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not self.hi > self.lo:
            raise ValueError(f"psnr_range must have hi > lo, got [{self.lo}, {self.hi}]")

    def verify(self, candidates: Candidates, prompts: Prompts) -> Scores:
        images = np.asarray(candidates.samples["image"], dtype=np.float32)
        clean = np.asarray(prompts.items["clean"], dtype=np.float32)
        finite = np.asarray(np.isfinite(images.reshape(len(images), -1)).all(axis=1), dtype=bool)
        with np.errstate(invalid="ignore"):
            reward = np.clip((psnr(np.nan_to_num(images), clean) - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        scores = Scores.from_rewards(np.where(finite, reward, np.nan))
        verdict = np.where(finite, scores.verdict, 2).astype(np.int8)
        detail = None if finite.all() else ["" if ok else "non-finite image" for ok in finite.tolist()]
        return Scores(reward=scores.reward, verdict=verdict, detail=detail)


class DigitsDenoiseTask:
    """Prompts are training images (``items["clean"]``); evaluation denoises a fixed held-out set.

    Evaluation uses fixed observation noise and fixed reverse-step noise (from ``eval_seed``, not
    from the ``rng`` it is given) so that every evaluation of every run and schedule sees the same
    noisy inputs: differences are the model's alone.
    """

    def __init__(self, data: DigitsData, *, denoiser: DenoisingGenerator, psnr_range: tuple[float, float],
                 n_eval: int, eval_seed: int = 0, label: str = "digits") -> None:
        if not 0 < n_eval <= len(data.heldout):
            raise ValueError(f"task.n_eval must be in 1..{len(data.heldout)}, got {n_eval}")
        self.data = data
        self.denoiser = denoiser
        self.psnr_range = psnr_range
        self.eval_seed = eval_seed
        self.label = label
        self.eval_clean_ = data.heldout[:n_eval]
        self.eval_noise_ = np.random.default_rng(eval_seed).standard_normal(self.eval_clean_.shape,
                                                                            dtype=np.float32)

    @property
    def name(self) -> str:
        return f"{self.label}-denoise-s{self.denoiser.noise_step}"

    @property
    def verifier(self) -> PSNRVerifier:
        return PSNRVerifier(*self.psnr_range)

    @property
    def primary_metric(self) -> str:
        return "psnr"

    @property
    def higher_is_better(self) -> bool:
        return True

    def sample_prompts(self, n: int, *, rng: np.random.Generator) -> Prompts:
        return self.prompts_at(rng.integers(0, len(self.data.train), n))

    @property
    def pool_size(self) -> int:
        """The clean training images, which weighted prompt policies draw from by index."""
        return len(self.data.train)

    def prompts_at(self, indices: npt.NDArray[np.int64]) -> Prompts:
        index = np.asarray(indices, dtype=np.int64)
        return Prompts(index=index, items={"clean": self.data.train[index]})

    def diagnostic_view(self, candidates: Candidates, prompts: Prompts) -> View:
        """The denoised images as pixel vectors (the diagnose stage's feature space)."""
        return View(features=_pixels(candidates.samples["image"]), space=PIXELS)

    def diagnostic_reference(self, n: int, *, rng: np.random.Generator) -> tuple[View, View]:
        """Anchor: clean training images (what perfect denoising of the prompts would give);
        reference: clean held-out images (the distribution evaluation measures against)."""

        def view(images: Images) -> View:
            chosen = rng.choice(len(images), min(n, len(images)), replace=False)
            return View(features=_pixels(images[np.sort(chosen)]), space=PIXELS)

        return view(self.data.train), view(self.data.heldout)

    def evaluate(self, model: DenoisingModel, *, rng: np.random.Generator) -> dict[str, float]:
        from synthloop.models.diffusion import torch_generator

        generator = torch_generator(np.random.default_rng(self.eval_seed), model.device)
        denoised, noisy = self.denoiser.denoise(model, self.eval_clean_, self.eval_noise_, generator=generator)
        values = psnr(denoised, self.eval_clean_)
        return {"psnr": float(values.mean()), "psnr_sd": float(values.std()),
                "psnr_noisy": float(psnr(noisy, self.eval_clean_).mean())}


PIXELS = "pixels (images flattened, in [-1, 1])"


def _pixels(images: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(images, dtype=np.float64)
    return np.clip(array.reshape(len(array), -1), -1.0, 1.0)

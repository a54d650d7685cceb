"""The ``dataset`` block of a run configuration: which data, in which order, at which size.

It lives with the readers that consume it, so ``clad.benchmarks`` never imports the run
configuration; ``clad.config`` composes it into ``RunConfig``. Every block forbids unknown keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticConfig(Block):
    """How the built-in synthetic set is generated when ``dataset.root`` does not exist yet.

    ``layout``: the folder layout written and read back: ``mvtec`` (MVTec AD), ``visa`` (VisA:
    JPEG images, instance-numbered masks and ``split_csv/1cls.csv``) or ``mvtec_ad2`` (MVTec AD
    2: its own ``validation/good`` and a ``test_public`` set). Each layout other than ``mvtec``
    has its own default root, ``data/synthetic_<layout>``.
    """

    seed: int = 0
    layout: Literal["mvtec", "visa", "mvtec_ad2"] = "mvtec"
    image_size: int = Field(128, ge=32, le=512)
    n_train: int = Field(40, ge=2)
    n_test_good: int = Field(10, ge=1)
    n_test_per_defect: int = Field(4, ge=1)


class SyntheticAudioConfig(Block):
    """How the built-in synthetic machine sounds are generated (``benchmarks.synthetic_audio``).

    Counts are per section: ``n_train`` normal training clips (source domain in the dcase2022
    layout), ``n_train_target`` target-domain ones (dcase2022 only), ``n_test`` normal and
    ``n_test`` anomalous test clips (per domain in dcase2022).
    """

    seed: int = 0
    layout: Literal["dcase2020", "dcase2022"] = "dcase2022"
    sections: int = Field(2, ge=1, le=50)
    n_train: int = Field(30, ge=2)
    n_train_target: int = Field(3, ge=1)
    n_test: int = Field(10, ge=1)
    duration_s: float = Field(2.0, ge=0.1, le=60.0)


class AudioConfig(Block):
    """Log-mel features of machine sounds (``clad.benchmarks.audio_features``).

    ``frames``: columns kept per clip (cut, or wrapped when the clip is shorter; 313 = 10 s at hop
    512). ``db_range``: [low, high] dB mapped to [0, 1]; null = the min and max over the first
    task's training clips. ``cache_dir``: null = ``<root>/.clad_cache``.
    """

    sample_rate: int = Field(16000, ge=1000)
    n_fft: int = Field(1024, ge=16)
    hop_length: int = Field(512, ge=1)
    n_mels: int = Field(128, ge=4)
    fmin: float = Field(0.0, ge=0.0)
    fmax: float | None = Field(None, gt=0.0)
    top_db: float | None = Field(80.0, gt=0.0)
    frames: int = Field(313, ge=4)
    db_range: tuple[float, float] | None = None
    cache_dir: str | None = None
    synthetic: SyntheticAudioConfig = SyntheticAudioConfig()

    @model_validator(mode="after")
    def _consistent(self) -> AudioConfig:
        nyquist = self.sample_rate / 2
        if self.fmax is not None and self.fmax > nyquist:
            raise ValueError(f"fmax {self.fmax} exceeds sample_rate / 2 = {nyquist}")
        if self.fmin >= (self.fmax or nyquist):
            raise ValueError(f"fmin {self.fmin} must lie below fmax ({self.fmax or nyquist})")
        if self.db_range is not None and not self.db_range[1] > self.db_range[0]:
            raise ValueError(f"db_range must be [low, high] with low < high, got {self.db_range}")
        return self


AUDIO_DATASETS = ("dcase2020", "dcase2022", "synthetic_audio")


DATASETS_3D: dict[str, Literal["mvtec3d", "synthetic3d"]] = {
    "mvtec3d": "mvtec3d",
    "synthetic3d": "synthetic3d",
    "mvtec": "mvtec3d",
    "synthetic": "synthetic3d",
}


class DatasetConfig(Block):
    """Which data, in which order, at which size.

    3D data (MVTec 3D-AD layout): ``name`` ``mvtec3d`` or ``synthetic3d``, or CLAD's
    ``use_3D_dataset: true`` with ``mvtec``/``synthetic`` (translated to those names). ``mode``
    picks the inputs: ``rgb`` [3 channels], ``depth`` [2: height above the background plane,
    foreground] or ``rgb+depth`` [5] (``clad.benchmarks.mvtec3d``); AST's names ``RGB`` and
    ``combi`` are accepted. ``depth`` and ``rgb+depth`` need a detector that takes an
    ``input_mode``.

    VisA (``name: visa``, ``clad.benchmarks.visa``): the official split file
    ``split_csv/1cls.csv`` decides train and test; the validation split is drawn from the
    training images with ``val_fraction``, as for MVTec AD. MVTec AD 2 (``name: mvtec_ad2``,
    ``clad.benchmarks.mvtec_ad2``): the validation split is the dataset's own
    ``validation/good`` folder, read as is (``val_fraction`` is ignored for it), and the test set
    is ``test_split``, which can only be ``test_public``: ``test_private`` and
    ``test_private_mixed`` have no public labels (MVTec's evaluation server scores them) and
    are refused when the data is read. The synthetic set writes either layout with
    ``synthetic.layout`` (``visa``, ``mvtec_ad2``) and is then read by that layout's reader.
    Default roots when ``root`` is not given: ``data/visa``, ``data/mvtec_ad2``, and
    ``data/synthetic_<layout>`` for a synthetic set in a layout other than ``mvtec``.
    """

    name: Literal[
        "synthetic",
        "mvtec",
        "visa",
        "mvtec_ad2",
        "mvtec3d",
        "synthetic3d",
        "dcase2020",
        "dcase2022",
        "synthetic_audio",
    ] = "synthetic"
    root: str = "data/synthetic"
    categories: list[str] | None = None
    image_size: int = Field(64, ge=16, le=1024)
    crop_size: int | None = Field(None, ge=16, le=1024)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    use_3D_dataset: bool = False
    mode: Literal["rgb", "depth", "rgb+depth"] = "rgb"
    test_split: Literal["test_public", "test_private", "test_private_mixed"] = "test_public"
    synthetic: SyntheticConfig = SyntheticConfig()
    audio: AudioConfig | None = None  # audio datasets only; filled with the defaults for them

    @field_validator("mode", mode="before")
    @classmethod
    def _ast_mode_names(cls, value: Any) -> Any:
        """AST's names for the modes are accepted too: RGB, depth, combi."""
        return {"RGB": "rgb", "combi": "rgb+depth"}.get(value, value)

    @model_validator(mode="after")
    def _three_d(self) -> DatasetConfig:
        if self.use_3D_dataset and self.name not in DATASETS_3D:
            raise ValueError(
                f"use_3D_dataset applies to mvtec/mvtec3d/synthetic/synthetic3d, not {self.name!r}"
            )
        if self.use_3D_dataset or self.name in ("mvtec3d", "synthetic3d"):
            self.name = DATASETS_3D[self.name]
            self.use_3D_dataset = True
            if self.name == "synthetic3d" and "root" not in self.model_fields_set:
                self.root = "data/synthetic3d"
        elif self.mode != "rgb":
            raise ValueError(
                f"mode {self.mode!r} needs a 3D dataset (name mvtec3d or synthetic3d, or "
                "use_3D_dataset: true); 2D datasets have RGB only"
            )
        return self

    @model_validator(mode="after")
    def _layouts(self) -> DatasetConfig:
        layout = self.synthetic.layout
        if layout != "mvtec" and self.use_3D_dataset:
            raise ValueError(
                f"synthetic.layout {layout!r} applies to the 2D synthetic set (name synthetic); "
                "the 3D synthetic set has the MVTec 3D-AD layout only"
            )
        if "root" not in self.model_fields_set:
            if self.name in ("visa", "mvtec_ad2"):
                self.root = f"data/{self.name}"
            elif self.name == "synthetic" and layout != "mvtec":
                self.root = f"data/synthetic_{layout}"
        if self.test_split != "test_public" and self.image_layout != "mvtec_ad2":
            raise ValueError(
                f"test_split {self.test_split!r} applies to MVTec AD 2 only (name mvtec_ad2, or "
                "synthetic with synthetic.layout mvtec_ad2)"
            )
        return self

    @property
    def image_layout(self) -> Literal["mvtec", "visa", "mvtec_ad2"]:
        """The folder layout of a 2D image set: that of ``name``, or of ``synthetic.layout``
        for the synthetic set."""
        if self.name in ("visa", "mvtec_ad2"):
            return self.name
        return self.synthetic.layout if self.name == "synthetic" else "mvtec"

    @field_validator("categories")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) == 0:
            raise ValueError("needs at least one category")
        if value is not None and len(set(value)) != len(value):
            raise ValueError("categories must not repeat")
        return value

    @model_validator(mode="after")
    def _audio_block(self) -> DatasetConfig:
        if self.name in AUDIO_DATASETS and self.audio is None:
            self.audio = AudioConfig()
        elif self.name not in AUDIO_DATASETS and self.audio is not None:
            raise ValueError(
                f"the audio block applies to {', '.join(AUDIO_DATASETS)} only, not {self.name!r}"
            )
        return self

    @property
    def category_list(self) -> tuple[str, ...]:
        """The categories (machine types) streamed, in order: ``categories``, or the dataset's
        default order (``clad.benchmarks.catalog.default_categories``)."""
        from clad.benchmarks.catalog import default_categories

        return tuple(self.categories) if self.categories else default_categories(self.name)

    @property
    def input_size(self) -> tuple[int, int]:
        """[H, W] of a detector's inputs: the images' side (``crop_size``, else ``image_size``)
        or, for machine sounds, the log-mel spectrogram's mels x frames."""
        if self.audio is not None:
            return (self.audio.n_mels, self.audio.frames)
        side = self.crop_size or self.image_size
        return (side, side)

    @property
    def modality(self) -> Literal["image", "audio"]:
        """``"audio"`` for machine sounds (log-mel inputs, DCASE metrics), else ``"image"``."""
        return "audio" if self.name in AUDIO_DATASETS else "image"

"""The ``dataset`` block of a run configuration: which data, in which order, at which size.

It lives with the readers that consume it, so ``clad.benchmarks`` never imports the run
configuration; ``clad.config`` composes it into ``RunConfig``. Every block forbids unknown keys.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CATEGORY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
"""A category name: letters, digits, ``_``, ``.``, ``-``, starting with a letter or digit (no
path separators, no ``..``): names become parts of output file names."""


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
    task's training clips. ``cache_dir``: null = the user's cache,
    ``$CLAD_CACHE_DIR`` else ``$XDG_CACHE_HOME/clad`` else ``~/.cache/clad``, in a folder of its
    own per dataset root (``audio_features.default_cache_dir``); never the dataset root, which
    may be read-only.
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

    Tasks: ``categories`` streams one category per task; ``tasks`` lists the categories of each
    task (``[["bottle", "cable"], ["capsule"]]``: a task learns its categories together);
    ``protocol`` names a protocol of ``clad.benchmarks.protocols`` (``mvtec_15x1``,
    ``mvtec_10-1x5``, ``visa_8-4``, ...; a drift protocol takes exactly one ``categories``
    entry). At most one of ``categories`` and ``tasks`` with a protocol other than drift.
    ``order`` reorders the categories and keeps the step sizes: ``protocol`` (as given),
    ``alphabetical``, ``random`` (seeded by the run's seed: a sweep over seeds is a sweep over
    orders) or an explicit list of every category. Category names are plain names
    (``CATEGORY_NAME``): they become parts of file names.

    ``decode_cache``: where decoded, resized images are kept between runs
    (``clad.benchmarks.decode_cache``): ``true`` (the user's cache, ``$CLAD_CACHE_DIR`` else
    ``$XDG_CACHE_HOME/clad`` else ``~/.cache/clad``, folder ``decoded``), a folder, or
    ``false`` (decode every run). It never changes a run's numbers.
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
    categories: list[Annotated[str, Field(pattern=CATEGORY_NAME)]] | None = None
    tasks: list[list[Annotated[str, Field(pattern=CATEGORY_NAME)]]] | None = None
    protocol: str | None = None
    order: Literal["protocol", "alphabetical", "random"] | list[str] = "protocol"
    image_size: int = Field(64, ge=16, le=1024)
    crop_size: int | None = Field(None, ge=16, le=1024)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    use_3D_dataset: bool = False
    mode: Literal["rgb", "depth", "rgb+depth"] = "rgb"
    test_split: Literal["test_public", "test_private", "test_private_mixed"] = "test_public"
    decode_cache: bool | str = True
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

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, value: list[list[str]] | None) -> list[list[str]] | None:
        if value is None:
            return value
        if not value or any(not task for task in value):
            raise ValueError("needs at least one task, each of at least one category")
        flat = [c for task in value for c in task]
        repeated = sorted({c for c in flat if flat.count(c) > 1})
        if repeated:
            raise ValueError(f"a category belongs to one task only; repeated: {repeated}")
        return value

    @model_validator(mode="after")
    def _task_list(self) -> DatasetConfig:
        from clad.benchmarks.catalog import did_you_mean
        from clad.benchmarks.protocols import PROTOCOLS

        if self.protocol is not None:
            protocol = PROTOCOLS.get(self.protocol)
            if protocol is None:
                hint = did_you_mean(self.protocol, list(PROTOCOLS))
                raise ValueError(
                    f"protocol {self.protocol!r} unknown{hint}; known: {', '.join(PROTOCOLS)} "
                    "(python main.py protocols lists them)"
                )
            if protocol.drift is not None:
                if self.use_3D_dataset:
                    raise ValueError(f"protocol {self.protocol!r} drifts RGB images only")
                if self.tasks is not None or self.categories is None or len(self.categories) != 1:
                    raise ValueError(
                        f"protocol {self.protocol!r} drifts one category: give exactly one in "
                        "dataset.categories"
                    )
            elif self.tasks is not None or self.categories is not None:
                raise ValueError(
                    f"protocol {self.protocol!r} names its categories: leave dataset.categories "
                    "and dataset.tasks out (dataset.order reorders them)"
                )
            elif protocol.dataset != self.name:
                raise ValueError(
                    f"protocol {self.protocol!r} is defined on {protocol.dataset}, not "
                    f"{self.name!r}"
                )
        elif self.tasks is not None and self.categories is not None:
            raise ValueError("give dataset.categories (one per task) or dataset.tasks, not both")
        if self.modality == "audio" and (self.tasks is not None or self.protocol is not None):
            raise ValueError("machine sounds stream one machine type per task: use categories")
        if isinstance(self.order, list):
            wanted = sorted(c for step in self.base_steps() for c in step)
            if sorted(self.order) != wanted:
                raise ValueError(
                    f"order {self.order} must list every category once: {', '.join(wanted)}"
                )
        return self

    def base_steps(self) -> tuple[tuple[str, ...], ...]:
        """The categories of each task before ``order`` applies: the protocol's steps, the
        ``tasks``, or one task per category."""
        from clad.benchmarks.protocols import PROTOCOLS

        protocol = PROTOCOLS.get(self.protocol) if self.protocol else None
        if protocol is not None and protocol.drift is None:
            return protocol.steps
        if self.tasks is not None:
            return tuple(tuple(task) for task in self.tasks)
        if protocol is not None and protocol.drift is not None:  # one category at every step
            from clad.benchmarks.drift import drift_steps

            return drift_steps(self.category_list[0], protocol.drift)
        return tuple((c,) for c in self.category_list)

    def task_categories(self, seed: int) -> tuple[tuple[str, ...], ...]:
        """The categories of each task, in stream order: ``base_steps`` with ``order`` applied
        (the step sizes kept; ``random`` permutes with ``seed``)."""
        from clad.benchmarks.protocols import split

        steps = self.base_steps()
        if self.order == "protocol" or (self.protocol or "").startswith("drift_"):
            return steps
        flat = [c for step in steps for c in step]
        if self.order == "alphabetical":
            flat = sorted(flat)
        elif self.order == "random":
            import numpy as np

            flat = [flat[i] for i in np.random.default_rng(seed).permutation(len(flat))]
        else:
            flat = list(self.order)
        return split(flat, [len(step) for step in steps])

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

        if self.tasks is not None:
            return tuple(c for task in self.tasks for c in task)
        if self.protocol is not None and not self.protocol.startswith("drift_"):
            from clad.benchmarks.protocols import PROTOCOLS

            return PROTOCOLS[self.protocol].categories
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

"""DCASE Task 2 readers: machine folders -> clip samples -> log-mel datasets -> a task stream.

Layouts (``dataset.root`` holds the machine folders, or a ``dev_data/`` folder that does)::

    dcase2020: <machine>/train/normal_id_00_00000000.wav
               <machine>/test/{normal,anomaly}_id_00_00000000.wav
    dcase2022: <machine>/train/section_00_source_train_normal_0000_<attributes>.wav
               <machine>/test/section_00_target_test_anomaly_0000_<attributes>.wav

A file name gives the clip's label (``normal``/``anomaly``), its section (``id_00`` in DCASE 2020,
``section_00`` in DCASE 2022) and, in DCASE 2022, its domain (``source``/``target``). Evaluation-set
test files whose names carry no label are refused: no metric can be computed from them.

Each machine type is one task. Its clips become log-mel spectrograms (``audio_features``, cached on
disk: ``dataset.audio.cache_dir``, else the user's cache, never the dataset root), scaled from dB
to [0, 1] by one affine map for the whole stream: ``dataset.audio.db_range`` when given, else the
minimum and maximum dB over the *first* task's training clips (as AEGAN-AD scales by its training
set's range, but fitted once, before any task is learnt, and never on test clips), clipped to
[0, 1]. Dataset items follow the image contract: ``(features [3, n_mels, frames]
float32 in [0, 1], mask [1, n_mels, frames] zeros, label)``: the spectrogram is repeated on three
channels so that every image detector (the autoencoders included) runs on it unchanged; AEGAN-AD
reads one channel. Test datasets carry each clip's ``section`` and ``domain`` as Avalanche data
attributes for the per-section metrics.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import AvalancheDataset
from torch import Tensor
from torch.utils.data import Dataset

from clad.benchmarks.audio_features import LogMelParams, default_cache_dir, extract_features
from clad.benchmarks.mvtec import list_folders
from clad.benchmarks.validation import split_validation
from clad.errors import DatasetError
from clad.records import Sample, Task

LAYOUTS = ("dcase2020", "dcase2022")

DCASE2020_NAME = re.compile(
    r"^(?P<label>normal|anomaly)_(?P<section>id_\d{2})_(?P<index>\d+)\.wav$"
)
DCASE2022_NAME = re.compile(
    r"^(?P<section>section_\d{2})_(?P<domain>source|target)_(?P<split>train|test)_"
    r"(?P<label>normal|anomaly)_(?P<index>\d+)(?:_.*)?\.wav$"
)
NAME_HELP = {
    "dcase2020": "{normal,anomaly}_id_XX_<index>.wav",
    "dcase2022": "section_XX_{source,target}_{train,test}_{normal,anomaly}_<index>[_<attrs>].wav",
}


def parse_clip_name(name: str, layout: str) -> dict[str, str | None]:
    """Fields of a DCASE clip file name: label, section, domain (None in DCASE 2020), split
    (DCASE 2022 only, else None) and index.

    Raises:
        DatasetError: when the name does not follow the layout's pattern.
    """
    pattern = DCASE2020_NAME if layout == "dcase2020" else DCASE2022_NAME
    match = pattern.match(name)
    if match is None:
        raise DatasetError(
            f"clip {name!r} does not follow the {layout} naming pattern {NAME_HELP[layout]} "
            "(evaluation-set test files without a normal/anomaly label cannot be scored)"
        )
    fields = match.groupdict()
    return {
        "label": fields["label"],
        "section": fields["section"],
        "domain": fields.get("domain"),
        "split": fields.get("split"),
        "index": fields["index"],
    }


def machine_folder(root: Path | str, machine: str) -> Path:
    """``<root>/<machine>``, or ``<root>/dev_data/<machine>`` when only that exists."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    for folder in (root / machine, root / "dev_data" / machine):
        if folder.is_dir():
            return folder
    found = [p.name for p in list_folders(root)]
    if (root / "dev_data").is_dir():
        found += [f"dev_data/{p.name}" for p in list_folders(root / "dev_data")]
    raise DatasetError(
        f"machine type {machine!r} not found in {root} (looked for {root / machine} and "
        f"{root / 'dev_data' / machine}); folders found there: {', '.join(found) or 'none'}"
    )


def list_wavs(folder: Path) -> list[Path]:
    """``*.wav`` files of ``folder`` (hidden ones skipped), sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() == ".wav" and not p.name.startswith(".")
    )


def read_machine(root: Path | str, machine: str, layout: str) -> tuple[list[Sample], list[Sample]]:
    """List the training and test clips of one machine type.

    Returns:
        (train, test): samples sorted by file name; ``defect`` is ``"normal"`` or ``"anomaly"``,
        ``section`` the section or id, ``domain`` ``"source"``/``"target"`` (None in DCASE 2020),
        ``has_masks`` False.

    Raises:
        DatasetError: naming the folder or file: a missing root, machine, ``train/`` or
            ``test/`` folder, a folder without wav files, a file name that does not parse, an
            anomalous clip in ``train/``, or a DCASE 2022 name whose split is not its folder's.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown DCASE layout {layout!r}; known: {', '.join(LAYOUTS)}")
    folder = machine_folder(root, machine)
    splits: dict[str, list[Sample]] = {}
    for split in ("train", "test"):
        where = folder / split
        if not where.is_dir():
            raise DatasetError(f"machine type {machine!r}: missing folder {where}")
        paths = list_wavs(where)
        if not paths:
            raise DatasetError(f"machine type {machine!r}: no .wav files in {where}")
        samples = []
        for path in paths:
            try:
                fields = parse_clip_name(path.name, layout)
            except DatasetError as err:
                raise DatasetError(f"{path}: {err}") from None
            if fields["split"] is not None and fields["split"] != split:
                raise DatasetError(f"{path}: a {fields['split']} clip in the {split}/ folder")
            label = int(fields["label"] == "anomaly")
            if split == "train" and label == 1:
                raise DatasetError(f"{path}: anomalous clip in the training folder {where}")
            samples.append(
                Sample(
                    path,
                    label,
                    str(fields["label"]),
                    machine,
                    None,
                    False,
                    section=fields["section"],
                    domain=fields["domain"],
                )
            )
        splits[split] = samples
    return splits["train"], splits["test"]


class AudioDataset(Dataset):
    """Log-mel spectrograms of some clips, read from a (memory-mapped) feature array.

    Items are ``(features [3, n_mels, frames] float32 in [0, 1], mask [1, n_mels, frames] zeros,
    label)``: dB values mapped by (dB - low) / (high - low) and clipped to [0, 1], repeated on
    three channels (a view; nothing is copied).

    Attributes:
        samples: the clips, in order.
        labels: 0 normal, 1 anomalous.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        features: np.ndarray,
        rows: Sequence[int],
        db_range: tuple[float, float],
    ) -> None:
        if len(samples) == 0:
            raise DatasetError("AudioDataset needs at least one clip")
        if len(rows) != len(samples):
            raise ValueError(f"{len(samples)} samples but {len(rows)} feature rows")
        low, high = db_range
        if not high > low:
            raise ValueError(f"db_range must rise, got {db_range}")
        self.samples = list(samples)
        self.labels = [s.label for s in self.samples]
        self.features = features  # [N_all, n_mels, frames] dB, float16
        self.rows = [int(r) for r in rows]
        self.low, self.high = float(low), float(high)

    @property
    def has_masks(self) -> bool:
        return False

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        db = torch.from_numpy(np.asarray(self.features[self.rows[index]], dtype=np.float32))
        spec = ((db - self.low) / (self.high - self.low)).clamp_(0.0, 1.0)  # [n_mels, frames]
        image = spec.unsqueeze(0).expand(3, -1, -1)  # [3, n_mels, frames], a view
        return image, torch.zeros(1, *spec.shape), self.labels[index]


def log_mel_params(audio) -> LogMelParams:
    """The feature parameters of a ``clad.config.AudioConfig``."""
    return LogMelParams(
        sample_rate=audio.sample_rate,
        n_fft=audio.n_fft,
        hop_length=audio.hop_length,
        n_mels=audio.n_mels,
        fmin=audio.fmin,
        fmax=audio.fmax,
        top_db=audio.top_db,
        frames=audio.frames,
    )


def dataset_layout(config) -> str:
    """The file layout of a ``DatasetConfig`` (synthetic audio: its generator's layout)."""
    return config.audio.synthetic.layout if config.name == "synthetic_audio" else config.name


def build_audio_tasks(config, seed: int) -> list[Task]:
    """Read (generating the synthetic set first when needed) and stream the machine types.

    Args:
        config: a ``clad.config.DatasetConfig`` of an audio dataset.
        seed: the run's seed (validation split).

    Returns:
        One ``Task`` per machine type in the configured order (``has_masks`` False).
    """
    audio = config.audio
    layout = dataset_layout(config)
    root = Path(config.root)
    machines = list(config.category_list)
    if config.name == "synthetic_audio":
        from clad.benchmarks.synthetic_audio import generate_dataset

        gen = audio.synthetic
        generate_dataset(
            root,
            machines,
            layout,
            gen.seed,
            gen.sections,
            gen.n_train,
            gen.n_train_target,
            gen.n_test,
            gen.duration_s,
            audio.sample_rate,
        )
    params = log_mel_params(audio)
    cache_dir = Path(audio.cache_dir) if audio.cache_dir else default_cache_dir(root)
    read = [read_machine(root, machine, layout) for machine in machines]  # check all first
    features = []
    for machine, (train, test) in zip(machines, read):
        features.append(
            (
                extract_features([s.path for s in train], params, cache_dir, f"{machine}-train"),
                extract_features([s.path for s in test], params, cache_dir, f"{machine}-test"),
            )
        )
    if audio.db_range is not None:
        db_range = (float(audio.db_range[0]), float(audio.db_range[1]))
    else:
        first_train = features[0][0]
        db_range = (float(first_train.min()), float(first_train.max()))
        if not db_range[1] > db_range[0]:
            raise DatasetError(
                f"machine type {machines[0]!r}: every training clip has the same level "
                f"({db_range[0]} dB); set dataset.audio.db_range"
            )
    splits: dict[str, list[AvalancheDataset]] = {"train": [], "val": [], "test": []}
    for machine, (train, test), (train_db, test_db) in zip(machines, read, features):
        fit, val = split_validation(train, config.val_fraction, seed, machine)
        row = {s.path: i for i, s in enumerate(train)}
        for split, samples, array in (("train", fit, train_db), ("val", val, train_db)):
            rows = [row[s.path] for s in samples]
            splits[split].append(AvalancheDataset([AudioDataset(samples, array, rows, db_range)]))
        splits["test"].append(
            AvalancheDataset([AudioDataset(test, test_db, range(len(test)), db_range)])
        )
    scenario = benchmark_from_datasets(**splits)
    return [
        Task(
            task_id=i,
            name=machine,
            train=scenario.train_stream[i].dataset,
            val=scenario.val_stream[i].dataset,
            test=scenario.test_stream[i].dataset,
            has_masks=False,
            test_sections=tuple(s.section or "" for s in test),
            test_domains=tuple(s.domain for s in test),
        )
        for i, (machine, (_, test)) in enumerate(zip(machines, read))
    ]

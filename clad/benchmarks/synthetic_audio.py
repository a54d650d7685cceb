"""Seeded synthetic machine sounds in the DCASE 2020 or DCASE 2022 Task 2 folder layouts.

Each machine type is a sum of three parts, all drawn afresh for every clip:

- a **tonal** part: harmonics k = 1..K of a fundamental f0 with a machine-specific amplitude
  profile, synthesised from an integrated instantaneous frequency (so the pitch can drift);
- a **machine noise** part: white noise shaped by a machine-specific band (FFT filter);
- a slow **amplitude modulation** (rotation, pumping), and an **ambient** noise floor 30 dB below
  the machine that an amplitude dropout does not remove.

| machine | sound (section 0, source domain) |
|---|---|
| ``fan`` | 120 Hz blade-pass tone with 6 harmonics, strong 80 Hz-6 kHz air noise, 1 Hz AM |
| ``pump`` | 50 Hz motor hum, odd harmonics stronger, to ~1 kHz; 0.4-2.5 kHz noise pulsing at 6 Hz |
| ``gearbox`` | 480 Hz gear-mesh tone with its 2nd and 3rd harmonic, 12 Hz shaft sidebands (AM) |
| ``bearing`` | 30 Hz shaft tone and 3 harmonics, weak 2-4 kHz friction noise, slow 0.5 Hz AM |

Sections (DCASE 2020 machine ids, DCASE 2022 sections) change the operating point: f0 x (1 + 0.1
s) for section s. Every clip jitters f0 by +-1 %, harmonic levels by +-10 %, noise by +-1 dB, the
gain by +-1 dB, and draws new phases. In the DCASE 2022 layout the **target** domain runs 12 %
faster (f0 and modulation rates x 1.12) with noise 3 dB louder, and has few training clips.

Anomalies (test clips ``anomaly``; kind ``ANOMALY_KINDS[index % 4]``, strength drawn per clip):

- ``click``: 3-6 broadband clicks (4 ms noise bursts decaying in 1 ms, 10-20 x the clip's RMS);
- ``drift``: the fundamental glides linearly by 8-15 % over the clip (all harmonics follow);
- ``burst``: bearing-like bursts: a 3-5 kHz resonance (3 ms decay) struck 6-12 times a second,
  1.5-3 x the RMS;
- ``dropout``: the machine fades by 12-20 dB for 0.2-0.4 s (20 ms ramps); the ambient floor stays.

Layouts written (file names as DCASE's)::

    dcase2020: <root>/dev_data/<machine>/train/normal_id_00_00000000.wav
               <root>/dev_data/<machine>/test/{normal,anomaly}_id_00_00000000.wav
    dcase2022: <root>/<machine>/train/section_00_source_train_normal_0000_spd_100.wav
               <root>/<machine>/test/section_00_target_test_anomaly_0000_spd_112.wav

Ids in the DCASE 2020 layout are even (00, 02, ...), as in DCASE 2020's development set. A
machine folder is written to a hidden temporary folder and renamed into place with a
``.complete`` marker (JSON: the parameters and each anomalous file's kind); an existing folder
with the same parameters is kept, one from other parameters is replaced, and a folder without a
marker is never touched. Every clip has its own generator seeded with ``(seed, crc32(machine),
section, crc32(domain), crc32(split), crc32(label), index)``: equal parameters give identical
files, and asking for more clips leaves the first ones as they were.

Command line::

    python main.py generate synthetic-audio --out data/synthetic_audio --seed 0 --layout dcase2022
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clad.benchmarks import generated
from clad.benchmarks.generated import MARKER, read_marker, stable_id, write_folder

SYNTHETIC_MACHINES = ("fan", "pump", "gearbox", "bearing")
ANOMALY_KINDS = ("click", "drift", "burst", "dropout")
LAYOUTS = ("dcase2020", "dcase2022")
GENERATOR_VERSION = 2  # bump when the sound changes, so stale folders are rewritten
TARGET_SPEED = 1.12  # DCASE 2022 layout: the target domain's speed factor
TARGET_NOISE_DB = 3.0
AMBIENT_DB = -30.0  # ambient floor relative to the machine's RMS
LEVEL = 0.05  # machine RMS of every clip before the +-1 dB gain jitter (-26 dBFS)


@dataclass(frozen=True)
class MachineSpec:
    """The sound of one machine type.

    Attributes:
        f0: fundamental (Hz) of section 0 in the source domain.
        harmonics: amplitude of harmonic k = 1..K (relative).
        noise_band: (low, high) Hz of the machine noise.
        noise_level: machine-noise RMS relative to the tonal part's RMS.
        am_rate: amplitude-modulation rate (Hz); am_depth its depth in [0, 1).
        am_target: what the modulation applies to: ``"all"``, ``"noise"`` or ``"tone"``.
    """

    f0: float
    harmonics: tuple[float, ...]
    noise_band: tuple[float, float]
    noise_level: float
    am_rate: float
    am_depth: float
    am_target: str


MACHINE_SPECS: dict[str, MachineSpec] = {
    "fan": MachineSpec(
        120.0, (1.0, 0.6, 0.45, 0.3, 0.2, 0.12), (80.0, 6000.0), 1.2, 1.0, 0.15, "all"
    ),
    "pump": MachineSpec(
        50.0,
        (
            0.5,
            0.15,
            1.0,
            0.1,
            0.6,
            0.05,
            0.4,
            0.03,
            0.25,
            0.02,
            0.15,
            0.0,
            0.1,
            0.0,
            0.08,
            0.0,
            0.06,
            0.0,
            0.05,
        ),
        (400.0, 2500.0),
        0.5,
        6.0,
        0.6,
        "noise",
    ),
    "gearbox": MachineSpec(480.0, (1.0, 0.5, 0.25), (100.0, 4000.0), 0.35, 12.0, 0.4, "tone"),
    "bearing": MachineSpec(30.0, (1.0, 0.5, 0.3, 0.2), (2000.0, 4000.0), 0.25, 0.5, 0.2, "all"),
}


# ----------------------------------------------------------------------------- sound


def band_noise(rng: np.random.Generator, n: int, sr: int, low: float, high: float) -> np.ndarray:
    """Unit-RMS noise [n] with a flat spectrum between ``low`` and ``high`` Hz (soft 10 % edges)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    rise = np.clip((freqs - 0.9 * low) / (0.1 * low + 1e-9), 0.0, 1.0)
    fall = np.clip((1.1 * high - freqs) / (0.1 * high), 0.0, 1.0)
    noise = np.fft.irfft(spectrum * rise * fall, n)
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def ramp_envelope(n: int, sr: int, start: float, length: float, depth_db: float) -> np.ndarray:
    """Gain [n]: 1, but ``depth_db`` lower from ``start`` s for ``length`` s (20 ms ramps)."""
    t = np.arange(n) / sr
    ramp = 0.02
    inside = np.clip(np.minimum(t - start, start + length - t) / ramp + 0.5, 0.0, 1.0)
    return 1.0 - (1.0 - 10.0 ** (-depth_db / 20.0)) * inside


def render_clip(
    machine: str,
    section: int,
    target: bool,
    anomaly: str | None,
    sample_rate: int,
    duration_s: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One clip: float32 [round(duration_s * sample_rate)], machine RMS about ``LEVEL``.

    Args:
        machine: a name of ``SYNTHETIC_MACHINES``.
        section: section (DCASE 2022) or id index (DCASE 2020), from 0.
        target: the target domain (faster, noisier).
        anomaly: None for a normal clip, else a kind of ``ANOMALY_KINDS``.
        sample_rate: samples per second.
        duration_s: clip length in seconds.
        rng: the clip's generator.
    """
    spec = MACHINE_SPECS[machine]
    n = int(round(duration_s * sample_rate))
    t = np.arange(n) / sample_rate
    speed = TARGET_SPEED if target else 1.0
    f0 = spec.f0 * (1.0 + 0.1 * section) * speed * rng.uniform(0.99, 1.01)
    glide = np.ones(n)
    if anomaly == "drift":
        glide = 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.15) * t / duration_s
    phase = 2.0 * np.pi * np.cumsum(f0 * glide) / sample_rate  # [n] integrated fundamental
    nyquist = sample_rate / 2
    tone = np.zeros(n)
    for k, weight in enumerate(spec.harmonics, start=1):
        if weight > 0 and k * f0 * 1.1 < nyquist:
            amplitude = weight * rng.uniform(0.9, 1.1)
            tone += amplitude * np.sin(k * phase + rng.uniform(0.0, 2.0 * np.pi))
    tone /= max(rms(tone), 1e-12)
    noise_db = rng.uniform(-1.0, 1.0) + (TARGET_NOISE_DB if target else 0.0)
    low, high = spec.noise_band
    noise = (
        spec.noise_level
        * 10.0 ** (noise_db / 20.0)
        * band_noise(rng, n, sample_rate, low, min(high, 0.95 * nyquist))
    )
    am_rate = spec.am_rate * speed * rng.uniform(0.95, 1.05)
    am = 1.0 + spec.am_depth * np.sin(2.0 * np.pi * am_rate * t + rng.uniform(0.0, 2.0 * np.pi))
    if spec.am_target == "all":
        machine_sound = am * (tone + noise)
    elif spec.am_target == "noise":
        machine_sound = tone + am * noise
    else:
        machine_sound = am * tone + noise
    level = rms(machine_sound)
    if anomaly == "click":
        width = int(0.004 * sample_rate)
        for _ in range(int(rng.integers(3, 7))):
            start = int(rng.integers(0, max(1, n - width)))
            decay = np.exp(-np.arange(width) / (0.001 * sample_rate))
            click = rng.uniform(10.0, 20.0) * level * decay * rng.standard_normal(width)
            machine_sound[start : start + width] += click[: n - start]
    elif anomaly == "burst":
        rate = rng.uniform(6.0, 12.0)
        centre = rng.uniform(3000.0, min(5000.0, 0.45 * sample_rate))
        width = int(0.02 * sample_rate)
        ring = np.exp(-np.arange(width) / (0.003 * sample_rate)) * np.sin(
            2.0 * np.pi * centre * np.arange(width) / sample_rate
        )
        ring *= rng.uniform(1.5, 3.0) * level / max(rms(ring[: int(0.003 * sample_rate)]), 1e-12)
        for strike in np.arange(rng.uniform(0.0, 1.0 / rate), duration_s, 1.0 / rate):
            start = int(strike * sample_rate)
            machine_sound[start : start + width] += ring[: n - start]
    elif anomaly == "dropout":
        length = rng.uniform(0.2, min(0.4, 0.5 * duration_s))
        start_s = rng.uniform(0.0, duration_s - length)
        machine_sound *= ramp_envelope(n, sample_rate, start_s, length, rng.uniform(12.0, 20.0))
    ambient = 10.0 ** (AMBIENT_DB / 20.0) * level * rng.standard_normal(n)
    # the gain comes from the level before the anomaly, so anomalous clips are not louder overall
    gain = LEVEL / level * 10.0 ** (rng.uniform(-1.0, 1.0) / 20.0)
    return np.clip((machine_sound + ambient) * gain, -0.99, 0.99).astype(np.float32)


# ----------------------------------------------------------------------------- writing


def clip_rng(
    seed: int, machine: str, section: int, domain: str, split: str, label: str, index: int
) -> np.random.Generator:
    key = [
        seed,
        stable_id(machine),
        section,
        stable_id(domain),
        stable_id(split),
        stable_id(label),
        index,
    ]
    return np.random.default_rng(key)


@dataclass(frozen=True)
class ClipPlan:
    """One file to write: where, and what to draw."""

    relative: str  # path under the machine folder
    section: int
    domain: str  # "source" or "target"
    split: str  # "train" or "test"
    label: str  # "normal" or "anomaly"
    index: int
    anomaly: str | None


def clip_name(layout: str, plan: ClipPlan) -> str:
    """The DCASE file name of a clip in ``layout``."""
    if layout == "dcase2020":
        return f"{plan.label}_id_{2 * plan.section:02d}_{plan.index:08d}.wav"
    speed = round(100 * (TARGET_SPEED if plan.domain == "target" else 1.0))
    return (
        f"section_{plan.section:02d}_{plan.domain}_{plan.split}_{plan.label}_{plan.index:04d}"
        f"_spd_{speed}.wav"
    )


def plan_machine(params: dict) -> list[ClipPlan]:
    """Every clip of one machine folder, in a fixed order."""
    layout = params["layout"]
    domains = ("source",) if layout == "dcase2020" else ("source", "target")
    plans = []
    for section in range(params["sections"]):
        for domain in domains:
            n_train = params["n_train"] if domain == "source" else params["n_train_target"]
            jobs = [
                ("train", "normal", n_train),
                ("test", "normal", params["n_test"]),
                ("test", "anomaly", params["n_test"]),
            ]
            for split, label, count in jobs:
                for index in range(count):
                    kind = ANOMALY_KINDS[index % len(ANOMALY_KINDS)] if label == "anomaly" else None
                    name = clip_name(
                        layout, ClipPlan("", section, domain, split, label, index, kind)
                    )
                    plans.append(
                        ClipPlan(f"{split}/{name}", section, domain, split, label, index, kind)
                    )
    return plans


def generation_params(
    machine: str,
    layout: str,
    seed: int,
    sections: int,
    n_train: int,
    n_train_target: int,
    n_test: int,
    duration_s: float,
    sample_rate: int,
) -> dict:
    """Validated parameters of one machine folder, as recorded in its ``.complete`` marker."""
    if machine not in MACHINE_SPECS:
        raise ValueError(
            f"unknown synthetic machine {machine!r}; known: {', '.join(SYNTHETIC_MACHINES)}"
        )
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for name, count in (
        ("sections", sections),
        ("n_train", n_train),
        ("n_train_target", n_train_target),
        ("n_test", n_test),
    ):
        if count < 1:
            raise ValueError(f"{name} must be at least 1, got {count}")
    if layout == "dcase2020" and sections > 50:
        raise ValueError(f"sections must be at most 50 in the dcase2020 layout, got {sections}")
    if not 0.1 <= duration_s <= 60.0:
        raise ValueError(f"duration_s must be in [0.1, 60], got {duration_s}")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be at least 8000, got {sample_rate}")
    return {
        "generator_version": GENERATOR_VERSION,
        "machine": machine,
        "layout": layout,
        "seed": seed,
        "sections": sections,
        "n_train": n_train,
        "n_train_target": n_train_target if layout == "dcase2022" else 0,
        "n_test": n_test,
        "duration_s": float(duration_s),
        "sample_rate": sample_rate,
    }


def machine_folder(root: Path | str, machine: str, layout: str) -> Path:
    """Where ``machine`` lives under ``root`` in ``layout``."""
    root = Path(root)
    return root / "dev_data" / machine if layout == "dcase2020" else root / machine


def is_complete(folder: Path, params: dict) -> bool:
    """Whether the machine folder's marker records ``params`` (under its ``"params"`` key)."""
    return generated.is_complete(folder, params, key="params")


def write_machine_files(folder: Path, params: dict) -> dict[str, str]:
    """Draw and write every clip of one machine; return {relative path: anomaly kind}."""
    import soundfile

    kinds = {}
    for plan in plan_machine(params):
        rng = clip_rng(
            params["seed"],
            params["machine"],
            plan.section,
            plan.domain,
            plan.split,
            plan.label,
            plan.index,
        )
        wave = render_clip(
            params["machine"],
            plan.section,
            plan.domain == "target",
            plan.anomaly,
            params["sample_rate"],
            params["duration_s"],
            rng,
        )
        path = folder / plan.relative
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), wave, params["sample_rate"], subtype="PCM_16")
        if plan.anomaly is not None:
            kinds[plan.relative] = plan.anomaly
    return kinds


def generate_machine(
    root: Path | str,
    machine: str,
    layout: str = "dcase2022",
    seed: int = 0,
    sections: int = 2,
    n_train: int = 30,
    n_train_target: int = 3,
    n_test: int = 10,
    duration_s: float = 2.0,
    sample_rate: int = 16000,
) -> Path:
    """Write one machine folder unless it is already there with these parameters.

    Args:
        root: dataset root (the DCASE 2020 layout adds ``dev_data/``).
        machine: a name of ``SYNTHETIC_MACHINES``.
        layout: ``"dcase2020"`` or ``"dcase2022"``.
        seed: generation seed.
        sections: sections (ids) per machine.
        n_train: normal training clips per section (source domain in the 2022 layout).
        n_train_target: 2022 layout: normal target-domain training clips per section.
        n_test: normal and anomalous test clips each, per section (and per domain in 2022).
        duration_s: clip length in seconds.
        sample_rate: samples per second.

    Returns:
        The machine folder.
    """
    params = generation_params(
        machine, layout, seed, sections, n_train, n_train_target, n_test, duration_s, sample_rate
    )
    target = machine_folder(root, machine, layout)
    if is_complete(target, params):
        return target

    def write(partial: Path) -> dict:
        kinds = write_machine_files(partial, params)
        return {"params": params, "anomaly_kinds": kinds}

    write_folder(target, write, owner="synthetic audio generator")
    return target


def generate_dataset(
    root: Path | str,
    machines: Sequence[str] | None = None,
    layout: str = "dcase2022",
    seed: int = 0,
    sections: int = 2,
    n_train: int = 30,
    n_train_target: int = 3,
    n_test: int = 10,
    duration_s: float = 2.0,
    sample_rate: int = 16000,
) -> Path:
    """Write the synthetic machines (all of ``SYNTHETIC_MACHINES`` by default) under ``root``,
    skipping those already complete with the same parameters. Returns ``root``."""
    if isinstance(machines, str):
        raise TypeError(f"machines must be a list of names, got the string {machines!r}")
    names = list(SYNTHETIC_MACHINES if machines is None else machines)
    for machine in names:  # validate everything before writing anything
        generation_params(
            machine,
            layout,
            seed,
            sections,
            n_train,
            n_train_target,
            n_test,
            duration_s,
            sample_rate,
        )
    for machine in names:
        generate_machine(
            root,
            machine,
            layout,
            seed,
            sections,
            n_train,
            n_train_target,
            n_test,
            duration_s,
            sample_rate,
        )
    return Path(root)


def anomaly_kinds(folder: Path) -> dict[str, str]:
    """{relative path: kind} of a generated machine folder's anomalous clips."""
    marker = read_marker(Path(folder))
    if marker is None:
        raise FileNotFoundError(f"{folder}: no {MARKER} marker of the synthetic audio generator")
    return dict(marker["anomaly_kinds"])

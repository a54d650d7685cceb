"""The synthetic machine-sound generator: layouts and names, determinism, anomaly kinds, atomic
folders, the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from clad.benchmarks.dcase import read_machine
from clad.benchmarks.generated import MARKER
from clad.benchmarks.synthetic_audio import (
    ANOMALY_KINDS,
    LEVEL,
    anomaly_kinds,
    clip_rng,
    generate_dataset,
    generate_machine,
    render_clip,
)
from clad.cli.generate import synthetic_audio as main

TINY = dict(sections=2, n_train=3, n_train_target=2, n_test=4, duration_s=0.5)


def wav_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.wav"))}


@pytest.mark.parametrize("layout", ["dcase2020", "dcase2022"])
def test_layouts_and_names_parse(tmp_path, layout):
    generate_dataset(tmp_path, ["fan", "bearing"], layout, seed=0, **TINY)
    base = tmp_path / "dev_data" if layout == "dcase2020" else tmp_path
    for machine in ("fan", "bearing"):
        train, test = read_machine(tmp_path, machine, layout)
        domains = 1 if layout == "dcase2020" else 2
        n_train = 2 * 3 if layout == "dcase2020" else 2 * (3 + 2)
        assert len(train) == n_train and all(s.label == 0 for s in train)
        assert len(test) == 2 * domains * (4 + 4)
        assert sum(s.label for s in test) == 2 * domains * 4
        sections = {s.section for s in test}
        if layout == "dcase2020":
            assert sections == {"id_00", "id_02"}
            assert {s.domain for s in test} == {None}
            assert (base / machine / "train" / "normal_id_02_00000002.wav").is_file()
        else:
            assert sections == {"section_00", "section_01"}
            assert {s.domain for s in test} == {"source", "target"}
            assert (
                base / machine / "test" / "section_01_target_test_anomaly_0003_spd_112.wav"
            ).is_file()
    info = soundfile.info(str(train[0].path))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 8000)


def test_same_seed_same_files_other_seed_differs(tmp_path):
    generate_dataset(tmp_path / "a", ["pump"], "dcase2022", seed=3, **TINY)
    generate_dataset(tmp_path / "b", ["pump"], "dcase2022", seed=3, **TINY)
    generate_dataset(tmp_path / "c", ["pump"], "dcase2022", seed=4, **TINY)
    a, b, c = (wav_bytes(tmp_path / x / "pump") for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_more_clips_keep_the_first_ones(tmp_path):
    generate_dataset(tmp_path / "a", ["gearbox"], "dcase2020", seed=0, **TINY)
    generate_dataset(tmp_path / "b", ["gearbox"], "dcase2020", seed=0, **{**TINY, "n_test": 6})
    small, large = wav_bytes(tmp_path / "a"), wav_bytes(tmp_path / "b")
    assert all(large[name] == data for name, data in small.items())


def test_every_anomaly_kind_is_drawn_and_recorded(tmp_path):
    folder = generate_machine(tmp_path, "fan", "dcase2022", seed=0, **TINY)
    kinds = anomaly_kinds(folder)
    assert set(kinds.values()) == set(ANOMALY_KINDS)
    assert all("_anomaly_" in name for name in kinds)
    assert len(kinds) == 2 * 2 * 4  # sections x domains x n_test


@pytest.mark.parametrize("machine", ["fan", "pump", "gearbox", "bearing"])
@pytest.mark.parametrize("anomaly", [None, *ANOMALY_KINDS])
def test_clips_are_finite_and_levelled(machine, anomaly):
    rng = clip_rng(0, machine, 0, "source", "test", "anomaly", 1)
    wave = render_clip(machine, 0, False, anomaly, 16000, 0.5, rng)
    assert wave.dtype == np.float32 and wave.shape == (8000,)
    assert np.isfinite(wave).all() and np.abs(wave).max() <= 0.99
    if anomaly in (None, "drift"):  # the gain sets the machine's RMS before the anomaly
        assert np.sqrt(np.mean(wave.astype(float) ** 2)) == pytest.approx(LEVEL, rel=0.15)


def test_anomalies_change_the_sound_of_the_same_draw():
    def draw(anomaly):
        return render_clip("gearbox", 1, True, anomaly, 16000, 1.0, np.random.default_rng(11))

    normal = draw(None)
    for kind in ANOMALY_KINDS:
        assert np.abs(draw(kind) - normal).max() > 0.01, kind


def test_stale_folder_replaced_foreign_folder_kept(tmp_path):
    folder = generate_machine(tmp_path, "bearing", "dcase2022", seed=0, **TINY)
    before = wav_bytes(folder)
    generate_machine(tmp_path, "bearing", "dcase2022", seed=1, **TINY)
    assert wav_bytes(folder) != before
    assert json.loads((folder / MARKER).read_text())["params"]["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    foreign = tmp_path / "pump"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not written by the synthetic audio generator"):
        generate_machine(tmp_path, "pump", "dcase2022", seed=0, **TINY)
    assert (foreign / "keep.txt").read_text() == "mine"


def test_bad_parameters_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic machine 'drill'"):
        generate_dataset(tmp_path, ["fan", "drill"], "dcase2022")
    with pytest.raises(ValueError, match="n_test"):
        generate_dataset(tmp_path, ["fan"], "dcase2022", n_test=0)
    assert not any(tmp_path.iterdir())  # nothing written before the check


def test_command_line(tmp_path, capsys):
    args = [
        "--out",
        str(tmp_path),
        "--seed",
        "2",
        "--layout",
        "dcase2020",
        "--machines",
        "pump",
        "--sections",
        "1",
        "--n-train",
        "2",
        "--n-test",
        "1",
        "--duration",
        "0.25",
    ]
    assert main(args) == 0
    assert "written" in capsys.readouterr().out
    assert len(list((tmp_path / "dev_data" / "pump").rglob("*.wav"))) == 2 + 1 + 1
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--machines", "drill"])

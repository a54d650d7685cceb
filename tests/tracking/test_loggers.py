"""W&B as its users expect (logged in as wandb would, seeds grouped, a step axis per kind of
value, summaries once, matrices as tables, overlays in their own section), the console's lines,
and progress that never floods a log file with carriage returns."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from clad import progress as progress_module
from clad.tracking import loggers
from clad.tracking.loggers import ConsoleLogger, WandbLogger, banner, wandb_mode

SECRET = "0123456789abcdef0123456789abcdef01234567"


class FakeRun:
    def __init__(self) -> None:
        self.logged: list[dict] = []
        self.metrics: list[tuple[str, dict]] = []
        self.summary: dict = {}
        self.finished = False

    def define_metric(self, name: str, **kwargs) -> None:
        self.metrics.append((name, kwargs))

    def log(self, values: dict, step: int | None = None) -> None:
        assert step is None, "values are logged against their own step metric"
        self.logged.append(values)

    def finish(self) -> None:
        self.finished = True


class FakeWandb:
    """The parts of wandb the logger uses, recording every call."""

    class Settings:
        def __init__(self, **kwargs) -> None:
            self.kwargs = kwargs

    class Table:
        def __init__(self, columns, data) -> None:
            self.columns, self.data = columns, data

    def __init__(self) -> None:
        self.run = FakeRun()
        self.init_kwargs: dict = {}

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        return self.run

    def Image(self, path):  # noqa: N802  (wandb's name)
        return ("image", path)


SETTINGS = {"project": "p", "entity": None, "group": None, "tags": [], "mode": None}


@pytest.fixture()
def fake(monkeypatch, tmp_path) -> FakeWandb:
    module = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", module)
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    return module


def netrc_login(monkeypatch, tmp_path) -> None:
    """As ``wandb login`` leaves it: the key in a netrc file, no WANDB_API_KEY."""
    path = tmp_path / "netrc"
    path.write_text(f"machine api.wandb.ai\n  login user\n  password {SECRET}\n")
    path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))


def test_a_user_logged_in_with_wandb_login_logs_online(fake, monkeypatch, tmp_path, capsys):
    netrc_login(monkeypatch, tmp_path)
    assert wandb_mode(None) == ("online", None)
    assert wandb_mode("online") == ("online", None)  # not switched to offline
    WandbLogger({**SETTINGS, "mode": "online"}, "demo-seed0", {"run_name": "demo"}, tmp_path)
    assert fake.init_kwargs["mode"] == "online"
    printed = capsys.readouterr().out
    assert "offline" not in printed and SECRET not in printed


def test_wandb_mode_is_honoured_and_the_config_wins_only_when_set(fake, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(None) == (None, None)  # wandb reads WANDB_MODE itself
    assert wandb_mode("offline") == ("offline", None)
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode(None) == ("offline", None)  # no credentials: never a prompt
    mode, note = wandb_mode("online")
    assert mode == "offline" and "no credentials" in note
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    assert wandb_mode(None) == ("online", None)
    assert SECRET not in (note or "")


def record() -> dict:
    return {
        "tasks": ["a", "b"],
        "categories": ["a", "b1", "b2"],
        "completed_tasks": 2,
        "matrices": {"image_auroc": [[0.9, None], [0.8, 0.7]]},
        "category_matrices": {"image_auroc": [[0.9, 0.5, None], [0.8, 0.7, 0.6]]},
    }


def test_wandb_logs_each_kind_against_its_own_axis_and_the_summary_once(fake, tmp_path):
    logger = WandbLogger(SETTINGS, "demo-seed0", {"run_name": "demo", "seed": 0}, tmp_path)
    assert fake.init_kwargs["group"] == "demo"  # the seeds of one config together
    assert fake.init_kwargs["job_type"] is None
    steps = dict(fake.run.metrics)
    assert steps["step/*"] == {"step_metric": "task"}
    assert steps["train/*"] == {"step_metric": "train/global_epoch"}
    entry = {
        "epochs": [
            {"epoch": 0, "step": 0, "train_loss": 0.5, "val_loss": 0.6, "lr": 0.01},
            {"epoch": 1, "step": 1, "train_loss": 0.4, "lr": 0.01, "stopped_early": False},
        ]
    }
    logger.log_history(0, "a", entry)
    assert fake.run.logged[0] == {
        "train/global_epoch": 0,
        "train/task": 0,
        "train/epoch": 0,
        "train/loss": 0.5,
        "train/val_loss": 0.6,
        "train/lr": 0.01,
    }
    summary = {"final_avg/image_auroc": 0.75, "forgetting/image_auroc": float("nan")}
    logger.log_task(1, "b", {"image_auroc/a": 0.8, **summary, "cost/train_seconds": 2.0})
    assert fake.run.logged[-1] == {
        "task": 1,
        "step/image_auroc/a": 0.8,
        "step/final_avg/image_auroc": 0.75,
        "step/cost/train_seconds": 2.0,
    }
    overlay = tmp_path / "overlays" / "a_hole_000.png"
    plot = tmp_path / "plots" / "matrix_image_auroc.png"
    logger.finish(summary, record(), [plot, overlay])
    assert fake.run.summary == {"final_avg/image_auroc": 0.75}  # once, at the end
    final = fake.run.logged[-1]
    assert final["overlays/a_hole_000"] == ("image", str(overlay))
    assert final["plots/matrix_image_auroc"] == ("image", str(plot))
    table = final["matrices/image_auroc"]
    assert table.columns == ["after task", "a", "b"]
    assert table.data == [["a", 0.9, None], ["b", 0.8, 0.7]]
    assert final["matrices_categories/image_auroc"].columns == ["after task", "a", "b1", "b2"]
    assert not any("final_avg/image_auroc" in values for values in fake.run.logged)
    assert fake.run.finished


def test_a_group_set_in_the_config_keeps_the_seeds_together_by_job_type(fake, tmp_path):
    WandbLogger({**SETTINGS, "group": "sweep1"}, "demo-seed0", {"run_name": "demo"}, tmp_path)
    assert fake.init_kwargs["group"] == "sweep1" and fake.init_kwargs["job_type"] == "demo"


def test_the_console_opens_with_a_banner_and_says_how_each_task_trained(capsys, tmp_path):
    text = banner("demo/seed_0", "conv_ae", "replay", ["a", "b"], "cpu", tmp_path / "out")
    assert "detector conv_ae, strategy replay, device cpu" in text
    assert "2 tasks: a, b" in text and f"output: {tmp_path / 'out'}" in text
    assert "resuming after task 0, a" in banner("d", "x", "y", ["a", "b"], "cpu", tmp_path, 1)
    console = ConsoleLogger("demo/seed_0")
    entry = {
        "epochs": [{"train_loss": 0.5, "val_loss": 0.4}, {"train_loss": 0.3, "val_loss": 0.45}],
        "stopped_early": True,
        "stopped_epoch": 1,
        "best_epoch": 0,
    }
    console.log_history(0, "a", entry)
    console.log_history(1, "b", {"epochs": []})  # a memory bank: nothing to say
    assert capsys.readouterr().out == (
        "[clad] demo/seed_0 task 0 (a) trained: 2 epochs, stopped early at epoch 1, best "
        "epoch 0, last training loss 0.3, best validation loss 0.4\n"
    )


def test_tables_never_show_minus_zero():
    assert loggers.fmt(-0.0000001) == "0.000" and loggers.fmt(None) == "  n/a"


def test_progress_off_a_terminal_prints_plain_lines_never_carriage_returns(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert not progress_module.on_terminal()
    bar = progress_module.progress(range(3), desc="decoding bottle (test)")
    assert isinstance(bar, progress_module.PlainProgress)
    out = io.StringIO()
    plain = progress_module.PlainProgress(range(3), "fit conv_ae", 3, interval=0.0, stream=out)
    plain.set_postfix({"train_loss": "0.1"})
    assert list(plain) == [0, 1, 2]
    assert out.getvalue().splitlines() == [
        "[clad] fit conv_ae: 1/3 (train_loss 0.1)",
        "[clad] fit conv_ae: 2/3 (train_loss 0.1)",
        "[clad] fit conv_ae: 3/3 (train_loss 0.1)",
    ]
    assert "\r" not in out.getvalue() + stream.getvalue()


def test_progress_on_a_terminal_is_a_tqdm_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    from tqdm.auto import tqdm

    assert isinstance(progress_module.progress(range(3), desc="x"), tqdm)


def test_decoding_lines_name_the_split(monkeypatch, synthetic_root):
    from clad.benchmarks import mvtec
    from clad.records import Sample

    seen = []

    def spy(iterable, desc, total=None, disable=False):
        seen.append(desc)
        return iterable

    monkeypatch.setattr(mvtec, "progress", spy)
    paths = sorted((synthetic_root / "disc" / "train" / "good").glob("*.png"))
    samples = [Sample(path=p, label=0, defect="good", category="disc") for p in paths]
    mvtec.ImageDataset(samples, 32, split="train")
    assert seen == ["decoding disc (train)"]


def test_no_key_is_written_to_a_run_folder(fake, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    WandbLogger(SETTINGS, "demo-seed0", {"run_name": "demo"}, tmp_path)
    assert SECRET not in str(fake.init_kwargs)

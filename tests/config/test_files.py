"""Configuration files: a bad one is one ``ConfigError`` line naming it, through the CLI too."""

from __future__ import annotations

import pytest

from clad.cli import main
from clad.config import read_json
from clad.errors import ConfigError


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"run_name": "a", "run_name": "b"}', "key 'run_name' appears twice"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"run_name": "caf\xe9"}', "not UTF-8"),
        (b"{", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
    ],
)
def test_a_bad_configuration_file_is_one_line_naming_it(tmp_path, capsys, content, expected):
    path = tmp_path / "run.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=expected) as caught:
        read_json(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert main(["--parameters_path", str(path), "--seed", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and expected in err[0]

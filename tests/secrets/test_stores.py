"""Secrets stores: environment and protected files; values never leak into messages."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from sfstream.errors import SecretError
from sfstream.secrets import EnvSecretsStore, FileSecretsStore, SecretsReadOnlyError, SecretsStore


async def test_env_store_reads_variables() -> None:
    store = EnvSecretsStore({"SF_SECRET": "value-1"})
    assert isinstance(store, SecretsStore)
    secret = await store.get("SF_SECRET")
    assert secret.get_secret_value() == "value-1"
    assert "value-1" not in repr(secret)
    assert "value-1" not in str(secret)


async def test_env_store_names_a_missing_secret() -> None:
    with pytest.raises(SecretError, match="SF_MISSING"):
        await EnvSecretsStore({}).get("SF_MISSING")


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


async def test_file_store_reads_name_value_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "secrets.env", "# comment\n\nexport A=1\nB = 'two words'\nC=\"3\"\n", 0o600
    )
    store = FileSecretsStore(path)
    assert (await store.get("A")).get_secret_value() == "1"
    assert (await store.get("B")).get_secret_value() == "two words"
    assert (await store.get("C")).get_secret_value() == "3"
    with pytest.raises(SecretError, match="'D' is not in"):
        await store.get("D")


async def test_file_store_reads_json(tmp_path: Path) -> None:
    path = write(tmp_path / "secrets.json", '{"A": "x", "B": "y"}', 0o400)
    assert (await FileSecretsStore(path).get("B")).get_secret_value() == "y"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
async def test_file_store_refuses_files_others_can_read(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "secrets.env", "A=super-secret\n", mode)
    with pytest.raises(SecretError, match="chmod 600") as info:
        await FileSecretsStore(path).get("A")
    assert "super-secret" not in str(info.value)


async def test_file_store_reports_bad_content_without_values(tmp_path: Path) -> None:
    path = write(tmp_path / "secrets.env", "A=fine\nthis line has no equals sign\n", 0o600)
    with pytest.raises(SecretError, match="line 2") as info:
        await FileSecretsStore(path).get("A")
    assert "fine" not in str(info.value)
    bad_json = write(tmp_path / "bad.json", '{"A": 1}', 0o600)
    with pytest.raises(SecretError, match="string values"):
        await FileSecretsStore(bad_json).get("A")


async def test_file_store_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="cannot read secrets file"):
        await FileSecretsStore(tmp_path / "nope").get("A")


# -- writing a secret back ----------------------------------------------------------------


async def test_env_store_is_read_only() -> None:
    store = EnvSecretsStore({"SF_REFRESH_TOKEN": "old-value"})
    assert store.writable is False
    with pytest.raises(SecretsReadOnlyError, match="SF_REFRESH_TOKEN") as info:
        await store.put("SF_REFRESH_TOKEN", SecretStr("new-value"))
    assert "new-value" not in str(info.value)
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "old-value"


ENV_FILE = (
    "# Salesforce connected app\r\n"
    "\r\n"
    "export SF_CLIENT_SECRET='client secret'\r\n"
    'SF_REFRESH_TOKEN = "old-token"  \r\n'
    "# SF_REFRESH_TOKEN=commented-out\r\n"
    "OTHER=x=y\r\n"
)


async def test_file_store_put_rewrites_one_entry_and_keeps_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path / "secrets.env", ENV_FILE, 0o600)
    inode = path.stat().st_ino
    store = FileSecretsStore(path)
    assert store.writable is True
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "old-token"
    await store.put("SF_REFRESH_TOKEN", SecretStr("5Aep.new-token"))
    assert path.read_bytes().decode() == ENV_FILE.replace("old-token", "5Aep.new-token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != inode  # replaced by a rename, never rewritten in place
    assert sorted(os.listdir(tmp_path)) == ["secrets.env"]  # no temporary file left behind
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "5Aep.new-token"
    fresh = FileSecretsStore(path)
    assert (await fresh.get("SF_REFRESH_TOKEN")).get_secret_value() == "5Aep.new-token"
    assert (await fresh.get("SF_CLIENT_SECRET")).get_secret_value() == "client secret"
    assert (await fresh.get("OTHER")).get_secret_value() == "x=y"


async def test_file_store_put_adds_a_missing_entry(tmp_path: Path) -> None:
    path = write(tmp_path / "secrets.env", "A=1", 0o600)  # no final newline
    await FileSecretsStore(path).put("B", SecretStr("2"))
    assert path.read_text() == "A=1\nB=2\n"
    empty = write(tmp_path / "empty.env", "", 0o600)
    await FileSecretsStore(empty).put("B", SecretStr("2"))
    assert empty.read_text() == "B=2\n"


async def test_file_store_put_sets_every_line_of_a_repeated_name(tmp_path: Path) -> None:
    path = write(tmp_path / "secrets.env", "A=old\nB=b\nexport A=older\n", 0o600)
    await FileSecretsStore(path).put("A", SecretStr("new"))
    assert path.read_text() == "A=new\nB=b\nexport A=new\n"


@pytest.mark.parametrize(
    "value",
    [
        " leading space",
        "trailing space ",
        "'quoted'",
        '"dq"',
        "'a\"",
        "#hash",
        "a=b",
        "é\U0001f600",
    ],
)
async def test_file_store_put_round_trips_awkward_values(tmp_path: Path, value: str) -> None:
    path = write(tmp_path / "secrets.env", "A=1\nB=2\n", 0o600)
    await FileSecretsStore(path).put("B", SecretStr(value))
    fresh = FileSecretsStore(path)
    assert (await fresh.get("B")).get_secret_value() == value
    assert (await fresh.get("A")).get_secret_value() == "1"


async def test_file_store_put_refuses_what_a_line_cannot_hold(tmp_path: Path) -> None:
    path = write(tmp_path / "secrets.env", "A=1\n", 0o600)
    store = FileSecretsStore(path)
    with pytest.raises(SecretError, match="spans lines") as info:
        await store.put("A", SecretStr("two\nlines-secret"))
    assert "lines-secret" not in str(info.value)
    with pytest.raises(SecretError, match="empty value"):
        await store.put("A", SecretStr(""))
    with pytest.raises(SecretError, match="cannot be named"):
        await store.put("A=B", SecretStr("x"))
    assert path.read_text() == "A=1\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"SF_CLIENT_SECRET": "s", "SF_REFRESH_TOKEN": "old", "Z": "é"}',
            '{"SF_CLIENT_SECRET": "s", "SF_REFRESH_TOKEN": "new", "Z": "é"}',
        ),
        (
            '{"SF_CLIENT_SECRET":"s","SF_REFRESH_TOKEN":"old"}\n',
            '{"SF_CLIENT_SECRET":"s","SF_REFRESH_TOKEN":"new"}\n',
        ),
        (
            '{\n    "SF_CLIENT_SECRET": "s",\n    "SF_REFRESH_TOKEN": "old"\n}\n',
            '{\n    "SF_CLIENT_SECRET": "s",\n    "SF_REFRESH_TOKEN": "new"\n}\n',
        ),
        (
            '{\n  "SF_CLIENT_SECRET": "s"\n}\n',
            '{\n  "SF_CLIENT_SECRET": "s",\n  "SF_REFRESH_TOKEN": "new"\n}\n',
        ),
    ],
)
async def test_file_store_put_keeps_a_json_file_json(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path / "secrets.json", text, 0o600)
    await FileSecretsStore(path).put("SF_REFRESH_TOKEN", SecretStr("new"))
    assert path.read_text() == expected
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_file_store_put_reads_the_file_as_it_is_now(tmp_path: Path) -> None:
    path = write(tmp_path / "secrets.env", "A=1\n", 0o600)
    store = FileSecretsStore(path)
    assert (await store.get("A")).get_secret_value() == "1"
    path.write_text("A=1\nADDED_MEANWHILE=2\n")  # by an operator, after the store read it
    await store.put("A", SecretStr("3"))
    assert path.read_text() == "A=3\nADDED_MEANWHILE=2\n"


async def test_file_store_put_follows_a_symlink(tmp_path: Path) -> None:
    real = write(tmp_path / "real.env", "A=1\n", 0o600)
    link = tmp_path / "secrets.env"
    link.symlink_to(real)
    await FileSecretsStore(link).put("A", SecretStr("2"))
    assert link.is_symlink()
    assert real.read_text() == "A=2\n"


async def test_file_store_without_write_permission_is_read_only(tmp_path: Path) -> None:
    path = write(tmp_path / "secrets.env", "A=1\n", 0o400)
    with pytest.raises(SecretsReadOnlyError, match="read-only \\(mode 0400\\)") as info:
        await FileSecretsStore(path).put("A", SecretStr("new-secret"))
    assert "new-secret" not in str(info.value)
    assert path.read_text() == "A=1\n"


async def test_file_store_put_refuses_a_file_others_can_read(tmp_path: Path) -> None:
    path = write(tmp_path / "secrets.env", "A=1\n", 0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        await FileSecretsStore(path).put("A", SecretStr("2"))
    assert path.read_text() == "A=1\n"


async def test_file_store_put_does_not_overwrite_a_file_it_cannot_read(tmp_path: Path) -> None:
    path = write(tmp_path / "secrets.env", "A=1\nnot a line\n", 0o600)
    with pytest.raises(SecretError, match="line 2"):
        await FileSecretsStore(path).put("A", SecretStr("2"))
    assert path.read_text() == "A=1\nnot a line\n"
    with pytest.raises(SecretError, match="cannot read secrets file"):
        await FileSecretsStore(tmp_path / "missing.env").put("A", SecretStr("2"))

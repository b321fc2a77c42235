"""Secrets stores: environment and protected files; values never leak into messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfstream.errors import SecretError
from sfstream.secrets import EnvSecretsStore, FileSecretsStore, SecretsStore


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

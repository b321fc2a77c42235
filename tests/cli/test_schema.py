"""`sfstream schema`: derive before the first run; list, show and history offline, read-only."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from sfstream.schema.registry import SqliteSchemaRegistry
from sfstream_emulator import Emulator, FieldDef
from tests.conftest import MakeConfig

ACCOUNTS = "sf.event.account_changes"
ORDERS = "sf.event.order_placed"
STREAMS = [
    {"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"},
    {"channel": "/event/Order_Placed__e"},
    {"channel": "/data/ChangeEvents"},
]


async def sfstream(
    *args: str, user: list[str] | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the `sfstream` command (as another user when `user` is a setpriv prefix)."""
    process = await asyncio.create_subprocess_exec(
        *(user or []),
        sys.executable,
        "-m",
        "sfstream.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


async def test_derive_registers_each_streams_schema_before_the_first_run(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu, STREAMS)
    path = str(tmp_path / "sfstream.yaml")
    registry = config.schema_registry.path
    assert registry is not None

    # Before anything ran: the registry does not exist, and listing it does not create it.
    code, out, err = await sfstream("schema", "list", "--config", path)
    assert code == 0, err
    assert "schema derive" in err
    assert "does not exist yet" in err
    code, out, err = await sfstream("schema", "list", "--json", "--config", path)
    assert code == 0, err
    assert orjson.loads(out) == {"subjects": [], "registry": str(registry), "exists": False}
    assert not registry.exists()

    code, out, err = await sfstream("schema", "derive", "--json", "--config", path)
    assert code == 0, err
    derived = {r["stream"]: r for r in orjson.loads(out)["streams"]}
    accounts, orders = derived[ACCOUNTS], derived[ORDERS]
    assert (accounts["subject"], accounts["version"], accounts["created"]) == (ACCOUNTS, 1, True)
    account = emu.runtime.spec.object("Account")
    assert account is not None
    assert accounts["schema_id"] == emu.runtime.schema_id(account)
    assert (orders["version"], orders["created"]) == (1, True)
    everything = derived["sf.event.all_changes"]
    assert everything["version"] is None
    assert "per entity" in everything["skipped"]

    # Deriving again registers nothing new.
    code, out, err = await sfstream("schema", "derive", "--config", path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["STREAM", "SUBJECT", "VERSION", "FIELDS"]
    assert any(ACCOUNTS in line and "already registered" in line for line in lines)
    assert any("sf.event.all_changes" in line and "skipped" in line for line in lines)
    assert lines[-1] == f"0 new versions registered in {registry}"

    code, out, _ = await sfstream("schema", "list", "--json", "--config", path)
    assert code == 0
    listed = orjson.loads(out)
    assert listed["exists"] is True
    assert [(s["subject"], s["version"]) for s in listed["subjects"]] == [
        (ACCOUNTS, 1),
        (ORDERS, 1),
    ]
    code, out, _ = await sfstream("schema", "show", ACCOUNTS, "--config", path)
    assert code == 0
    shown = orjson.loads(out)
    assert "NumberOfEmployees" in shown["properties"]

    # A new definition is a new version; the unchanged stream keeps its own.
    emu.alter_fields("Account", add=[FieldDef(name="Tier__c", type="string")])
    code, out, err = await sfstream("schema", "derive", "--json", "--config", path)
    assert code == 0, err
    derived = {r["stream"]: r for r in orjson.loads(out)["streams"]}
    assert (derived[ACCOUNTS]["version"], derived[ACCOUNTS]["created"]) == (2, True)
    assert (derived[ORDERS]["version"], derived[ORDERS]["created"]) == (1, False)
    code, out, _ = await sfstream("schema", "history", ACCOUNTS, "--json", "--config", path)
    assert [c["field"] for c in orjson.loads(out)["versions"][1]["diff"]] == ["Tier__c"]


async def test_derive_reports_a_stream_whose_schema_cannot_be_fetched(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(
        sfstream_emulator,
        [{"channel": "/data/AccountChangeEvent"}, {"channel": "/event/Nope__e"}],
    )
    code, out, err = await sfstream("schema", "derive", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 1
    assert "1 of 2 stream schemas could not be derived" in err
    assert "Traceback" not in err
    (failed,) = [line for line in out.splitlines() if "sf.event.nope" in line]
    assert "FAILED" in failed
    assert any(ACCOUNTS in line and " registered " in line for line in out.splitlines())


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's own tmp_path is private to its user)."""
    directory = Path(tempfile.mkdtemp(prefix="sfstream-schema-"))
    directory.chmod(0o755)
    yield directory
    for path in [directory, *directory.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(directory)


async def test_list_show_history_read_a_read_only_registry_offline(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path, public_dir: Path
) -> None:
    await make_config(sfstream_emulator, STREAMS[:1])
    registry_dir = public_dir / "registry"
    writer = SqliteSchemaRegistry(registry_dir / "schemas.db")
    try:
        for fields in (["Name"], ["Name", "Tier__c"]):
            properties = {f: {"type": ["string", "null"]} for f in fields}
            await writer.register(ACCOUNTS, {"type": "object", "properties": properties}, avro={})
    finally:
        await writer.close()

    # The registry in a read-only directory, read-only itself, with a configuration whose
    # org cannot be reached.
    shutil.copy(tmp_path / "secrets.env", public_dir / "secrets.env")
    document = yaml.safe_load((tmp_path / "sfstream.yaml").read_text())
    document["salesforce"]["login_url"] = "http://127.0.0.1:9"
    document["state"] = {"path": str(public_dir / "state" / "state.db")}
    document["schema_registry"] = {"path": str(registry_dir / "schemas.db")}
    config = public_dir / "sfstream.yaml"
    config.write_text(yaml.safe_dump(document))
    user: list[str] = []
    if os.geteuid() == 0:
        # Permissions do not bind root: read as an unprivileged user.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs setpriv to drop root's privileges")
        user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        for path in (public_dir, config, public_dir / "secrets.env"):
            os.chown(path, 65534, 65534)
        probe = await asyncio.create_subprocess_exec(
            *user, sys.executable, "-c", "import sfstream.cli.schema", cwd=public_dir
        )
        if await probe.wait() != 0:
            pytest.skip("an unprivileged user cannot run this Python")
    (registry_dir / "schemas.db").chmod(0o444)
    registry_dir.chmod(0o555)
    before = files(registry_dir)
    env = {**os.environ, "HOME": str(public_dir), "PYTHONDONTWRITEBYTECODE": "1"}

    code, out, err = await sfstream("schema", "list", "--config", str(config), user=user, env=env)
    assert code == 0, err
    (row,) = out.splitlines()[1:]
    assert row.split()[:2] == [ACCOUNTS, "2"]
    code, out, err = await sfstream(
        "schema", "show", ACCOUNTS, "--version", "1", "--config", str(config), user=user, env=env
    )
    assert code == 0, err
    assert "Tier__c" not in orjson.loads(out)["properties"]
    code, out, err = await sfstream(
        "schema", "history", ACCOUNTS, "--config", str(config), user=user, env=env
    )
    assert code == 0, err
    assert out.count("version ") == 2
    assert "Tier__c" in out
    code, _, err = await sfstream(
        "schema", "show", "sf.event.nope", "--config", str(config), user=user, env=env
    )
    assert code == 1
    assert "no schema registered for sf.event.nope" in err

    assert files(registry_dir) == before
    assert stat.S_IMODE((registry_dir / "schemas.db").stat().st_mode) == 0o444
    assert not (public_dir / "state").exists()

"""`sfstream endpoints`: every host and port a configuration makes the connector contact, as
an operator runs it (`python -m sfstream.cli`), and `--resolve` logged in to the emulator."""

from __future__ import annotations

import asyncio
import os
import sys
import typing
import urllib.parse
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from sfstream.cli.endpoints import postgres_hosts
from sfstream.engine.config import StateConfig
from sfstream.errors import ConfigError
from sfstream_emulator import Emulator
from tests.conftest import MakeConfig

SALESFORCE = {
    "login_url": "https://login.salesforce.com",
    "client_id": "3MVG9example",
    "client_secret": "${secret:SF_CLIENT_SECRET}",
    "refresh_token": "${secret:SF_REFRESH_TOKEN}",
}
STREAMS = [{"channel": "/data/AccountChangeEvent"}]
DYNAMODB = "dynamodb" in typing.get_args(StateConfig.model_fields["backend"].annotation)


async def sfstream(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the command in a clean environment: no AWS, OTEL or proxy variables of the
    machine's, plus `env`."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "OTEL_", "SFSTREAM_", "ECS_", "PG"))
        and k.lower() not in ("https_proxy", "http_proxy", "no_proxy")
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfstream.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**base, **(env or {})},
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def write(tmp_path: Path, **sections: Any) -> Path:
    document: dict[str, Any] = {"salesforce": SALESFORCE, "streams": STREAMS, **sections}
    path = tmp_path / "sfstream.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


async def endpoints_json(
    path: Path, *args: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    code, out, err = await sfstream("endpoints", "--config", str(path), "--json", *args, env=env)
    assert code == 0, err
    found: dict[str, Any] = orjson.loads(out)
    return found


def by_what(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["what"]: e for e in found["endpoints"]}


# -- the command --------------------------------------------------------------------------------


async def test_sqlite_configuration(tmp_path: Path) -> None:
    path = write(tmp_path, state={"path": "state.db"}, observability={"metrics_port": 9464})
    found = await endpoints_json(path)
    assert found["allowlist"] == ["login.salesforce.com:443", "*.my.salesforce.com:443"]
    endpoints = by_what(found)
    assert "/cometd/62.0" in endpoints["salesforce instance"]["detail"]
    assert endpoints["state store (sqlite)"]["route"] == "local"
    assert str(tmp_path / "state.db") in endpoints["state store (sqlite)"]["detail"]
    assert endpoints["ecs task metadata"]["address"] == "169.254.170.2:80"
    assert endpoints["ecs task metadata"]["route"] == "local"
    metrics = endpoints["metrics endpoint"]
    assert (metrics["port"], metrics["route"]) == (9464, "inbound")
    # No AWS service is named by this configuration, and no OTLP exporter is set up.
    assert not [e for e in found["endpoints"] if "aws" in e["what"] or "otlp" in e["what"]]


async def test_table_for_people(tmp_path: Path) -> None:
    path = write(tmp_path, salesforce={**SALESFORCE, "login_url": "https://test.salesforce.com"})
    code, out, _ = await sfstream("endpoints", "--config", str(path))
    assert code == 0
    header, *rows = out.split("\n\n")[0].splitlines()
    assert header.split() == ["WHAT", "HOST", "PORT", "ROUTE", "DETAIL"]
    assert rows[0].split()[:5] == ["salesforce", "login", "test.salesforce.com", "443", "egress"]
    assert "*.sandbox.my.salesforce.com" in rows[1]
    allowlist = out.split("egress allow-list (host:port):\n")[1].split()
    assert allowlist == ["test.salesforce.com:443", "*.sandbox.my.salesforce.com:443"]


async def test_my_domain_login_host_is_the_instance(tmp_path: Path) -> None:
    login = "https://acme.my.salesforce.com"
    path = write(tmp_path, salesforce={**SALESFORCE, "login_url": login, "api_version": "60.0"})
    endpoints = by_what(await endpoints_json(path))
    assert endpoints["salesforce instance"]["address"] == "acme.my.salesforce.com:443"
    assert "/services/data/v60.0/" in endpoints["salesforce instance"]["detail"]


async def test_postgres_hosts_without_the_password(tmp_path: Path) -> None:
    dsn = "postgresql://sfstream:hunter2-not-shown@db1.internal:6432,10.0.3.4/sfstream"
    path = write(tmp_path, state={"backend": "postgres", "dsn": dsn})
    code, out, err = await sfstream("endpoints", "--config", str(path), "--json")
    assert code == 0, err
    assert "hunter2" not in out + err
    found = orjson.loads(out)
    postgres = [e for e in found["endpoints"] if e["what"] == "state store (postgres)"]
    assert [e["address"] for e in postgres] == ["db1.internal:6432", "10.0.3.4:5432"]
    assert "security group" in postgres[1]["detail"]
    assert {"db1.internal:6432", "10.0.3.4:5432"} <= set(found["allowlist"])


async def test_aws_secrets_manager(tmp_path: Path) -> None:
    secrets = {"backend": "aws", "aws_secret_id": "sfstream/prod", "aws_region": "eu-west-1"}
    path = write(tmp_path, secrets=secrets)
    endpoints = by_what(await endpoints_json(path))
    assert (
        endpoints["aws secrets manager"]["address"] == "secretsmanager.eu-west-1.amazonaws.com:443"
    )
    assert endpoints["aws credentials"]["route"] == "local"  # the task role, link-local
    # The region from the environment, and an endpoint URL as the AWS SDK takes it.
    path = write(tmp_path, secrets={"backend": "aws", "aws_secret_id": "sfstream/prod"})
    endpoints = by_what(await endpoints_json(path, env={"AWS_REGION": "cn-north-1"}))
    assert endpoints["aws secrets manager"]["host"] == "secretsmanager.cn-north-1.amazonaws.com.cn"
    env = {
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": "https://vpce.example:8443",
    }
    found = await endpoints_json(path, env=env)
    assert by_what(found)["aws secrets manager"]["address"] == "vpce.example:8443"
    assert "vpce.example:8443" in found["allowlist"]


@pytest.mark.skipif(not DYNAMODB, reason="the dynamodb state backend is not in this tree yet")
async def test_dynamodb_state(tmp_path: Path) -> None:
    state = {"backend": "dynamodb", "table": "sfstream-state", "region": "us-east-2"}
    path = write(tmp_path, state=state)
    found = await endpoints_json(path)
    (dynamodb,) = [e for e in found["endpoints"] if e["what"].startswith("state store")]
    assert dynamodb["address"] == "dynamodb.us-east-2.amazonaws.com:443"
    assert "sfstream-state" in dynamodb["what"]
    assert "dynamodb.us-east-2.amazonaws.com:443" in found["allowlist"]
    path = write(tmp_path, state={**state, "endpoint_url": "http://127.0.0.1:8000"})
    found = await endpoints_json(path)
    (dynamodb,) = [e for e in found["endpoints"] if e["what"].startswith("state store")]
    assert (dynamodb["address"], dynamodb["route"]) == ("127.0.0.1:8000", "local")


async def test_otlp_endpoint_from_the_otel_variables(tmp_path: Path) -> None:
    path = write(tmp_path)
    found = await endpoints_json(
        path, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example.com:4318"}
    )
    otlp = by_what(found)["otlp traces"]
    assert otlp["address"] == "otel.example.com:4318"
    assert "/v1/traces" in otlp["detail"]
    assert "otel.example.com:4318" in found["allowlist"]
    traces = "http://collector:9000/custom"
    found = await endpoints_json(path, env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces})
    assert by_what(found)["otlp traces"]["address"] == "collector:9000"
    # An exporter other than otlp: no endpoint.
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}
    assert "otlp traces" not in by_what(await endpoints_json(path, env=env))


async def test_proxy_and_ecs_metadata(tmp_path: Path) -> None:
    secrets = {"backend": "aws", "aws_secret_id": "sfstream/prod", "aws_region": "eu-west-1"}
    path = write(tmp_path, secrets=secrets)
    env = {
        "HTTPS_PROXY": "http://proxy.corp:3128",
        "NO_PROXY": ".amazonaws.com",
        "ECS_CONTAINER_METADATA_URI_V4": "http://169.254.170.2/v4/abc",
    }
    found = await endpoints_json(path, env=env)
    # The task connects to the proxy for Salesforce, and straight to AWS (NO_PROXY).
    assert found["allowlist"] == ["proxy.corp:3128", "secretsmanager.eu-west-1.amazonaws.com:443"]
    assert found["through_proxies"] == {
        "proxy.corp:3128": ["login.salesforce.com:443", "*.my.salesforce.com:443"]
    }
    metadata = by_what(found)["ecs task metadata"]
    assert (metadata["address"], metadata["route"]) == ("169.254.170.2:80", "local")


async def test_resolve_logs_in_and_prints_the_instance(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    await make_config(emu)
    path = tmp_path / "sfstream.yaml"
    parts = urllib.parse.urlsplit(emu.url)
    instance = f"{parts.hostname}:{parts.port}"
    # Before login, the emulator's instance cannot be told from its login URL.
    code, out, _ = await sfstream("endpoints", "--config", str(path))
    assert code == 0
    assert "(known after login)" in out
    assert "run with --resolve" in out
    found = by_what(await endpoints_json(path, "--resolve"))
    assert found["salesforce instance"]["address"] == instance
    assert found["salesforce instance"]["route"] == "local"  # the emulator is on this host
    assert "from the login" in found["salesforce instance"]["detail"]
    assert found["salesforce login"]["address"] == instance


async def test_resolve_with_a_refused_login_exits_1(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(sfstream_emulator)
    (tmp_path / "secrets.env").write_text("SF_CLIENT_SECRET=wrong\nSF_REFRESH_TOKEN=wrong\n")
    code, out, err = await sfstream(
        "endpoints", "--config", str(tmp_path / "sfstream.yaml"), "--resolve"
    )
    assert code == 1
    assert out == ""
    assert err.startswith("sfstream: ")
    assert "Traceback" not in err


# -- bad input ----------------------------------------------------------------------------------


async def test_missing_configuration_exits_2(tmp_path: Path) -> None:
    code, out, err = await sfstream("endpoints", "--config", str(tmp_path / "nope.yaml"))
    assert (code, out) == (2, "")
    assert "cannot read config file" in err
    assert "Traceback" not in err


async def test_invalid_configuration_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, stat={"backend": "postgres"})
    code, _, err = await sfstream("endpoints", "--config", str(path))
    assert code == 2
    assert "stat: unknown section (did you mean state?)" in err


async def test_unreadable_dsn_exits_2_without_showing_it(tmp_path: Path) -> None:
    path = write(tmp_path, state={"backend": "postgres", "dsn": "mysql://root:s3cr3tpw@db/x"})
    code, out, err = await sfstream("endpoints", "--config", str(path))
    assert (code, out) == (2, "")
    assert "sfstream: configuration error: state.dsn: a connection URL starts with" in err
    assert "s3cr3tpw" not in err


async def test_listed_in_help() -> None:
    code, out, _ = await sfstream("--help")
    assert code == 0
    assert "  endpoints " in out


# -- connection strings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "environ", "expected"),
    [
        ("postgresql://u:p@db:6543/x", {}, [("db", 6543)]),
        ("postgres://db/x?sslmode=require", {}, [("db", 5432)]),
        ("postgresql://u@a:1,b:2,c/x", {}, [("a", 1), ("b", 2), ("c", 5432)]),
        ("postgresql://[2001:db8::1]:5433/x", {}, [("2001:db8::1", 5433)]),
        ("postgresql:///x?host=/tmp&port=7000", {}, [("/tmp", 7000)]),
        ("postgresql:///x", {"PGHOST": "envhost", "PGPORT": "7777"}, [("envhost", 7777)]),
        ("host=db port=6000 dbname=x", {}, [("db", 6000)]),
        ("host='db one' password='it\\'s' dbname=x", {}, [("db one", 5432)]),
        ("host=a,b port=5433 user=u", {}, [("a", 5433), ("b", 5433)]),
        ("dbname=x", {}, [("/var/run/postgresql", 5432)]),
        ("hostaddr=10.1.2.3 dbname=x", {}, [("10.1.2.3", 5432)]),
    ],
)
def test_postgres_hosts(dsn: str, environ: dict[str, str], expected: list[tuple[str, int]]) -> None:
    assert postgres_hosts(dsn, environ) == expected


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("host=a,b port=1,2,3", "names 2 hosts but 3 ports"),
        ("postgresql://db:port/x", "a port is not a number"),
        ("host=db port=70000", "a port is not from 1 to 65535"),
        ("just some words", "not a connection string"),
    ],
)
def test_postgres_hosts_refuses(dsn: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        postgres_hosts(dsn, {})

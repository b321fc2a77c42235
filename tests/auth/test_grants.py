"""Which grant needs which credential: one rule, and every place that checks a login uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from click.testing import CliRunner
from pydantic import SecretStr

from sfstream.auth import (
    GRANT_REQUIREMENTS,
    GRANT_TYPES,
    GrantType,
    OAuthCredentials,
    grant_needs_message,
    missing_for_grant,
    required_for_grant,
)
from sfstream.cli.tail import tail
from sfstream.engine.config import SalesforceConfig, load_config
from sfstream.errors import ConfigError

COMPLETE: dict[str, Any] = {
    "client_secret": "the-client-secret",
    "refresh_token": "the-refresh-token",
    "username": "integration@example.com",
    "password": "the-password",
    # Not parsed until a token is requested (tests/auth/test_jwt_bearer.py signs with real keys).
    "private_key": "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----",
}
SECRET_FIELDS = ("client_secret", "refresh_token", "password", "private_key")
CASES = [(grant, name) for grant, needs in GRANT_REQUIREMENTS.items() for name in needs]


def test_the_rule_covers_every_grant_type() -> None:
    assert set(GRANT_TYPES) == set(get_args(GrantType)) == set(GRANT_REQUIREMENTS)
    assert required_for_grant("refresh_token") == ("refresh_token",)
    assert required_for_grant("password") == ("username", "password")
    assert required_for_grant("client_credentials") == ("client_secret",)
    assert required_for_grant("jwt_bearer") == ("username", "private_key")
    with pytest.raises(ValueError, match="unknown grant type 'implicit'"):
        required_for_grant("implicit")


def test_missing_counts_absent_none_and_empty_and_never_returns_values() -> None:
    assert missing_for_grant("password", {}) == ("username", "password")
    assert missing_for_grant("password", {"username": "u", "password": SecretStr("")}) == (
        "password",
    )
    assert missing_for_grant("password", {"username": "", "password": SecretStr("p")}) == (
        "username",
    )
    assert missing_for_grant("refresh_token", {"refresh_token": SecretStr("r")}) == ()
    assert (
        grant_needs_message("password", ("username", "password"))
        == "the password grant needs username and password"
    )


def _credentials(grant: str, **values: Any) -> OAuthCredentials:
    secrets: dict[str, Any] = {
        k: SecretStr(v) if k in SECRET_FIELDS and v is not None else v for k, v in values.items()
    }
    return OAuthCredentials(
        login_url="https://login.salesforce.com",
        client_id="key",
        grant_type=grant,  # type: ignore[arg-type]
        **secrets,
    )


@pytest.mark.parametrize(("grant", "name"), CASES)
@pytest.mark.parametrize("absent", [None, ""])
def test_credentials_refuse_what_the_rule_refuses(
    grant: str, name: str, absent: str | None
) -> None:
    _credentials(grant, **COMPLETE)
    with pytest.raises(ConfigError) as info:
        _credentials(grant, **{**COMPLETE, name: absent})
    assert str(info.value) == grant_needs_message(grant, (name,))


def test_credentials_refuse_an_unknown_grant() -> None:
    with pytest.raises(ConfigError, match="unknown grant type 'implicit'"):
        _credentials("implicit", **COMPLETE)


@pytest.mark.parametrize(("grant", "name"), CASES)
@pytest.mark.parametrize("absent", [None, ""])
def test_configuration_refuses_what_the_rule_refuses(
    grant: str, name: str, absent: str | None
) -> None:
    SalesforceConfig.model_validate({"client_id": "key", "grant_type": grant, **COMPLETE})
    with pytest.raises(ValueError, match=grant_needs_message(grant, (name,))):
        SalesforceConfig.model_validate(
            {"client_id": "key", "grant_type": grant, **COMPLETE, name: absent}
        )


async def test_configuration_file_reports_the_rule_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "sfstream.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "salesforce": {"client_id": "k", "grant_type": "password", "username": "u"},
                "streams": [{"channel": "/u/X"}],
            }
        )
    )
    with pytest.raises(ConfigError, match="salesforce: the password grant needs password"):
        await load_config(path, environ={})


def _tail(tmp_path: Path, grant: str, secrets: dict[str, str], *extra: str) -> tuple[int, str]:
    path = tmp_path / "secrets.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
    path.chmod(0o600)
    result = CliRunner().invoke(
        tail,
        [
            "--channel",
            "/event/X__e",
            "--client-id",
            "key",
            "--grant",
            grant,
            "--secrets-file",
            str(path),
            *extra,
        ],
    )
    return result.exit_code, result.output


TAIL_SECRETS = {
    "client_secret": "SFSTREAM_CLIENT_SECRET",
    "refresh_token": "SFSTREAM_REFRESH_TOKEN",
    "password": "SFSTREAM_PASSWORD",
}


@pytest.mark.parametrize(("grant", "name"), [c for c in CASES if c[1] in TAIL_SECRETS])
def test_tail_requires_the_secrets_the_rule_requires(tmp_path: Path, grant: str, name: str) -> None:
    present = {TAIL_SECRETS[k]: "s3cr3t-v4lue" for k in TAIL_SECRETS if k != name}
    code, output = _tail(tmp_path, grant, present, "--username", "u")
    assert code == 2
    assert f"secret '{TAIL_SECRETS[name]}' is not in" in output
    assert "s3cr3t-v4lue" not in output


def test_tail_names_the_flag_for_a_missing_username(tmp_path: Path) -> None:
    code, output = _tail(tmp_path, "password", {"SFSTREAM_PASSWORD": "pw-value"})
    assert code == 2
    assert "the password grant needs username: pass --username" in output
    assert "pw-value" not in output

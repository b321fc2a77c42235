"""`sfstream endpoints`: every host and port the connector contacts for a configuration, so
that an operator can write the NAT gateway's (or the firewall's) egress allow-list.

| endpoint | from |
|---|---|
| Salesforce login (token endpoint) | `salesforce.login_url` |
| Salesforce instance (Streaming API, REST) | the token response's `instance_url` (`--resolve`) |
| PostgreSQL state store | each host and port of `state.dsn` (else `PGHOST`, `PGPORT`) |
| DynamoDB state store | `state.endpoint_url`, else the endpoint of `state.region` |
| AWS Secrets Manager | `secrets.backend: aws`: the endpoint of `secrets.aws_region` |
| OTLP trace receiver | the `OTEL_*` variables, when they configure an exporter |
| ECS task metadata and credentials | link-local (169.254.170.2): no egress needed |
| the metrics endpoint | `observability.metrics_port`: inbound, not egress |

The instance host is the org's My Domain (`MYDOMAIN.my.salesforce.com`): it is known before
login only when the login URL is that host; otherwise its pattern is printed.

An AWS endpoint follows the region of the configuration, else `AWS_REGION` (or
`AWS_DEFAULT_REGION`), and `AWS_ENDPOINT_URL_<SERVICE>` or `AWS_ENDPOINT_URL` as the AWS SDK
does. With `HTTPS_PROXY` set (and the host not in `NO_PROXY`), the connection goes to the
proxy, which is listed too.

The configuration is loaded as `sfstream state show` loads it: without the Salesforce
secrets (a `state.dsn` reference is still resolved). `--resolve` loads every secret, logs in
and prints the org's actual instance host.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

import click
import msgspec

from sfstream.cli.common import CONFIG_OPTION, ConfigProblem, call, load, print_json, table
from sfstream.engine.config import Config
from sfstream.errors import ConfigError

Route = Literal["egress", "local", "inbound"]
"""egress: leaves the task (the allow-list); local: the same host, a local file or a
link-local address (no egress); inbound: the connector listens."""

ECS_METADATA: Final = "169.254.170.2"
"""The ECS task metadata and credentials endpoint (link-local)."""
_DEFAULT_PORTS: Final = {"https": 443, "http": 80}
_MY_DOMAIN: Final = (".my.salesforce.com", ".my.salesforce.mil")
_LOGIN_HOSTS: Final = {
    "login.salesforce.com": "*.my.salesforce.com",
    "test.salesforce.com": "*.sandbox.my.salesforce.com",
}
"""Generic login host -> the pattern of the org's My Domain host."""
_KEYWORD: Final = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)")


class Endpoint(msgspec.Struct, frozen=True):
    """A host the connector contacts (or listens on)."""

    what: str
    host: str | None
    """A host name, an address, a pattern (`*.my.salesforce.com`); None when it is known
    only after login."""
    port: int | None
    route: Route
    detail: str = ""
    via_proxy: str | None = None
    """`host:port` of the proxy the connection goes through, if any."""

    @property
    def address(self) -> str:
        """`host:port` (`[address]:port` for IPv6), as an allow-list writes it."""
        host = self.shown_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def shown_host(self) -> str:
        if self.host is not None:
            return self.host
        return "(known after login)" if self.route == "egress" else "-"


@click.command()
@CONFIG_OPTION
@click.option(
    "--resolve",
    is_flag=True,
    help="Log in (with every secret) and print the org's actual instance host.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def endpoints(config_path: Path, resolve: bool, as_json: bool) -> None:
    """Print every host and port the connector contacts, for the NAT egress allow-list.

    Salesforce (login and instance), the state store, AWS services, the OTLP receiver; and
    what needs no egress (local files, ECS metadata) or is inbound (the metrics endpoint).
    The instance host is the org's My Domain, known after login: `--resolve` logs in and
    prints it.
    """
    config = load(config_path, log_level="warning", offline=not resolve)
    instance_url = call(lambda: _instance_url(config)) if resolve else None
    try:
        found = list_endpoints(config, os.environ, instance_url=instance_url)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    allowed = allowlist(found)
    proxied = behind_proxies(found)
    if as_json:
        print_json(
            {
                "endpoints": [{**msgspec.structs.asdict(e), "address": e.address} for e in found],
                "allowlist": allowed,
                "through_proxies": proxied,
            }
        )
        return
    rows = [
        [
            e.what,
            e.shown_host,
            str(e.port) if e.port is not None else "-",
            e.route,
            e.detail + (f"; through the proxy {e.via_proxy}" if e.via_proxy else ""),
        ]
        for e in found
    ]
    table(["WHAT", "HOST", "PORT", "ROUTE", "DETAIL"], rows)
    click.echo("")
    click.echo("egress allow-list (host:port):")
    for entry in allowed:
        click.echo(f"  {entry}")
    if any(e.host is None and e.route == "egress" for e in found):
        click.echo("  (and the instance host: run with --resolve to print it)")
    for proxy, reached in proxied.items():
        click.echo(f"through the proxy {proxy}: {', '.join(reached)}")


async def _instance_url(config: Config) -> str:
    from sfstream.runners.wiring import org_session

    async with org_session(config) as session:
        token = await session.tokens.token()
    return token.instance_url


def allowlist(found: list[Endpoint]) -> list[str]:
    """`host:port` of every egress endpoint the connector connects to, once each, in order:
    for a host reached through a proxy, the proxy."""
    entries: list[str] = []
    for endpoint in found:
        if endpoint.route != "egress" or endpoint.host is None:
            continue
        entry = endpoint.via_proxy or endpoint.address
        if entry not in entries:
            entries.append(entry)
    return entries


def behind_proxies(found: list[Endpoint]) -> dict[str, list[str]]:
    """Proxy -> `host:port` of the endpoints reached through it (the proxy's allow-list)."""
    hosts: dict[str, list[str]] = {}
    for endpoint in found:
        if endpoint.via_proxy is not None and endpoint.host is not None:
            reached = hosts.setdefault(endpoint.via_proxy, [])
            if endpoint.address not in reached:
                reached.append(endpoint.address)
    return hosts


def list_endpoints(
    config: Config, environ: Mapping[str, str], *, instance_url: str | None = None
) -> list[Endpoint]:
    """The endpoints of `config`, in the environment `environ`; `instance_url`: the org's
    instance, from a login (else its pattern)."""
    found = [
        *_salesforce(config, environ, instance_url),
        *_state(config, environ),
        *_secrets(config, environ),
        *_tracing(environ),
    ]
    uses_aws = config.secrets.backend == "aws" or config.state.backend == "dynamodb"
    return found + _local(config, environ, uses_aws=uses_aws)


# -- Salesforce ----------------------------------------------------------------------------------


def _salesforce(
    config: Config, environ: Mapping[str, str], instance_url: str | None
) -> list[Endpoint]:
    api = config.salesforce.api_version
    paths = f"/cometd/{api} (Streaming API), /services/data/v{api}/ (REST)"
    secret = config.unresolved_secrets.get("salesforce.login_url")
    if secret is not None:
        login = Endpoint(
            "salesforce login",
            None,
            None,
            "egress",
            f"the login URL is the secret {secret}: run with --resolve",
        )
        instance = Endpoint("salesforce instance", None, None, "egress", paths)
        return [login, instance]
    login_host, login_port = _host_port(config.salesforce.login_url)
    login = Endpoint(
        "salesforce login",
        login_host,
        login_port,
        _route(login_host),
        "POST /services/oauth2/token (token endpoint)",
        _proxy(config.salesforce.login_url, environ),
    )
    if instance_url is not None:
        host, port = _host_port(instance_url)
        instance = Endpoint(
            "salesforce instance",
            host,
            port,
            _route(host),
            f"{paths}; the org's instance, from the login",
            _proxy(instance_url, environ),
        )
        return [login, instance]
    via = _proxy(f"https://{login_host}", environ)
    if login_host is not None and login_host.endswith(_MY_DOMAIN):
        detail = f"{paths}; the My Domain login host (--resolve confirms it)"
        instance = Endpoint("salesforce instance", login_host, login_port, "egress", detail, via)
    elif login_host in _LOGIN_HOSTS:
        detail = f"{paths}; the org's My Domain, known after login (--resolve prints it)"
        instance = Endpoint(
            "salesforce instance", _LOGIN_HOSTS[login_host], 443, "egress", detail, via
        )
    else:
        detail = f"{paths}; the token response's instance_url: run with --resolve"
        instance = Endpoint("salesforce instance", None, None, "egress", detail)
    return [login, instance]


# -- the state store -----------------------------------------------------------------------------


def _state(config: Config, environ: Mapping[str, str]) -> list[Endpoint]:
    state = config.state
    found: list[Endpoint] = []
    if state.backend == "postgres":
        assert state.dsn is not None  # checked by the configuration
        found.extend(
            _postgres_endpoint(host, port)
            for host, port in postgres_hosts(state.dsn.get_secret_value(), environ)
        )
    elif state.backend == "sqlite":
        found.append(
            Endpoint("state store (sqlite)", None, None, "local", f"local file {state.path}")
        )
    else:
        found.append(_dynamodb(config, environ))
    # The schema registry lives in the state store, or in an SQLite file.
    registry = config.schema_registry.path
    if registry is not None:
        found.append(
            Endpoint("schema registry (sqlite)", None, None, "local", f"local file {registry}")
        )
    return found


def _postgres_endpoint(host: str, port: int) -> Endpoint:
    what = "state store (postgres)"
    if host.startswith(("/", "@")):
        return Endpoint(what, None, None, "local", f"Unix socket in {host}")
    address = _ip(host)
    if address is not None and (address.is_loopback or address.is_link_local):
        return Endpoint(what, host, port, "local", "this host")
    if address is not None and address.is_private:
        detail = "a private address: a security group rule, not the NAT"
        return Endpoint(what, host, port, "egress", detail)
    detail = "in the VPC: a security group rule; elsewhere: through the NAT"
    return Endpoint(what, host, port, "egress", detail)


def postgres_hosts(dsn: str, environ: Mapping[str, str]) -> list[tuple[str, int]]:
    """(host, port) of each server a libpq connection string names, URL
    (`postgresql://u@h1:5432,h2/db`) or keywords (`host=h1,h2 port=5432`); a host it
    does not name is `PGHOST`, else the local socket; a port, `PGPORT`, else 5432.

    Raises:
        ConfigError: the string cannot be read (the message never shows it).
    """
    params = _dsn_params(dsn)
    hosts = (params.get("host") or params.get("hostaddr") or "").split(",")
    ports = (params.get("port") or "").split(",")
    if hosts == [""]:
        hosts = (environ.get("PGHOST") or "/var/run/postgresql").split(",")
    if ports == [""]:
        ports = (environ.get("PGPORT") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        raise ConfigError(
            f"state.dsn: names {len(hosts)} hosts but {len(ports)} ports; give one port, "
            "or one for each host"
        )
    found = []
    for host, port in zip(hosts, ports, strict=True):
        try:
            number = int(port or "5432")
        except ValueError:
            raise ConfigError("state.dsn: a port is not a number") from None
        if not 0 < number < 65536:
            raise ConfigError("state.dsn: a port is not from 1 to 65535")
        found.append((host or "/var/run/postgresql", number))
    return found


def _dsn_params(dsn: str) -> dict[str, str]:
    text = dsn.strip()
    if "://" in text:
        return _url_params(text)
    params = {}
    at = 0
    while at < len(text):
        match = _KEYWORD.match(text, at)
        if match is None:
            if text[at:].strip():
                raise ConfigError(
                    "state.dsn: not a connection string (postgresql://USER@HOST:PORT/DB, or "
                    "host=HOST port=PORT dbname=DB)"
                )
            break
        key, value = match.groups()
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key] = value
        at = match.end()
    return params


def _url_params(dsn: str) -> dict[str, str]:
    scheme, _, rest = dsn.partition("://")
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError("state.dsn: a connection URL starts with postgresql:// (or postgres://)")
    netloc, _, tail = rest.partition("/")
    netloc, _, query = netloc.partition("?")
    if not query:
        query = tail.partition("?")[2]
    params: dict[str, str] = {}
    hosts, ports = [], []
    for item in netloc.rpartition("@")[2].split(","):
        if item.startswith("["):  # [IPv6]:port
            address, _, port = item[1:].partition("]")
            hosts.append(address)
            ports.append(port.removeprefix(":"))
        else:
            address, _, port = item.partition(":")
            hosts.append(urllib.parse.unquote(address))
            ports.append(port)
    if any(hosts):
        params["host"] = ",".join(hosts)
    if any(ports):
        params["port"] = ",".join(ports)
    params.update(
        (key, value)
        for key, value in urllib.parse.parse_qsl(query)
        if key in ("host", "hostaddr", "port")
    )
    return params


def _dynamodb(config: Config, environ: Mapping[str, str]) -> Endpoint:
    state = config.state
    return _aws_endpoint(
        f"state store (dynamodb, table {state.table})",
        "dynamodb",
        variable="DYNAMODB",
        region=state.region,
        endpoint_url=state.endpoint_url,
        environ=environ,
    )


# -- AWS -----------------------------------------------------------------------------------------


def _secrets(config: Config, environ: Mapping[str, str]) -> list[Endpoint]:
    secrets = config.secrets
    if secrets.backend != "aws":
        return []
    endpoint = _aws_endpoint(
        "aws secrets manager",
        "secretsmanager",
        variable="SECRETS_MANAGER",
        region=secrets.aws_region,
        endpoint_url=secrets.aws_endpoint_url,
        environ=environ,
    )
    return [endpoint]


def _aws_endpoint(
    what: str,
    service: str,
    *,
    variable: str,
    region: str | None,
    endpoint_url: str | None,
    environ: Mapping[str, str],
) -> Endpoint:
    """The endpoint the AWS SDK calls for `service`: the configured URL, else
    `AWS_ENDPOINT_URL_<variable>` or `AWS_ENDPOINT_URL`, else the regional endpoint."""
    url = (
        endpoint_url
        or environ.get(f"AWS_ENDPOINT_URL_{variable}")
        or environ.get("AWS_ENDPOINT_URL")
    )
    if url:
        host, port = _host_port(url)
        return Endpoint(what, host, port, _route(host), f"endpoint {url}", _proxy(url, environ))
    region = region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if not region:
        detail = "the region of the AWS configuration (set AWS_REGION to print it)"
        return Endpoint(what, f"{service}.<region>.amazonaws.com", 443, "egress", detail)
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    host = f"{service}.{region}.{suffix}"
    detail = f"regional endpoint ({region}); or a VPC endpoint of the service"
    return Endpoint(what, host, 443, "egress", detail, _proxy(f"https://{host}", environ))


# -- tracing and the platform --------------------------------------------------------------------


def _tracing(environ: Mapping[str, str]) -> list[Endpoint]:
    from sfstream.observability.tracing import enabled

    if not enabled(environ):
        return []
    url = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not url:
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
        url = base.rstrip("/") + "/v1/traces"
    host, port = _host_port(url)
    path = urllib.parse.urlsplit(url).path or "/"
    detail = f"POST {path} (OTLP/HTTP traces)"
    return [Endpoint("otlp traces", host, port, _route(host), detail, _proxy(url, environ))]


def _local(config: Config, environ: Mapping[str, str], *, uses_aws: bool) -> list[Endpoint]:
    found = []
    metadata = environ.get("ECS_CONTAINER_METADATA_URI_V4")
    host, port = _host_port(metadata) if metadata else (ECS_METADATA, 80)
    found.append(
        Endpoint(
            "ecs task metadata",
            host,
            port,
            "local",
            "link-local, on ECS and Fargate only: no egress needed",
        )
    )
    if uses_aws:
        found.append(
            Endpoint(
                "aws credentials",
                ECS_METADATA,
                80,
                "local",
                "the task role's credentials, link-local on ECS and Fargate (Lambda passes "
                "them in the environment): no egress needed",
            )
        )
    observability = config.observability
    if observability.metrics_port is not None:
        found.append(
            Endpoint(
                "metrics endpoint",
                observability.metrics_host,
                observability.metrics_port,
                "inbound",
                "sfstream listens: /metrics, /healthz, /readyz (allow Prometheus in only)",
            )
        )
    return found


# -- URLs ----------------------------------------------------------------------------------------


def _host_port(url: str) -> tuple[str | None, int | None]:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{url!r} is not a URL with a valid port") from None
    return parts.hostname, port if port is not None else _DEFAULT_PORTS.get(parts.scheme)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _route(host: str | None) -> Route:
    """`local` for this host and link-local addresses, else `egress`."""
    if host is None:
        return "egress"
    address = _ip(host)
    if host == "localhost" or (
        address is not None and (address.is_loopback or address.is_link_local)
    ):
        return "local"
    return "egress"


def _exempt(host: str, no_proxy: str) -> bool:
    """Whether `NO_PROXY` (`*`, or host names and `.domain` suffixes) exempts `host`."""
    for entry in no_proxy.split(","):
        name = entry.strip().lower().rpartition(":")[0] if ":" in entry else entry.strip().lower()
        if name == "*":
            return True
        name = name.lstrip(".")
        if name and (host.lower() == name or host.lower().endswith("." + name)):
            return True
    return False


def _proxy(url: str, environ: Mapping[str, str]) -> str | None:
    """`host:port` of the proxy `HTTPS_PROXY` (`HTTP_PROXY` for http://) names for `url`,
    unless `NO_PROXY` exempts its host."""
    parts = urllib.parse.urlsplit(url)
    name = "https_proxy" if parts.scheme == "https" else "http_proxy"
    proxy = environ.get(name) or environ.get(name.upper())
    if not proxy or parts.hostname is None or _route(parts.hostname) == "local":
        return None
    if _exempt(parts.hostname, environ.get("no_proxy") or environ.get("NO_PROXY") or ""):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    host, port = _host_port(proxy)
    return f"{host}:{port}"

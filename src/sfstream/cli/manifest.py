"""`sfstream manifest`: what the connector declares, for orchestrators and catalogs."""

from __future__ import annotations

import sys

import click

from sfstream.errors import ExitCode


@click.command()
@click.option(
    "--check",
    "check_it",
    is_flag=True,
    help="Validate the manifest and its consistency with the code.",
)
@click.option(
    "--schema",
    "print_schema",
    is_flag=True,
    help="Print the manifest's JSON Schema (draft 2020-12) instead.",
)
def manifest(check_it: bool, print_schema: bool) -> None:
    """Print the connector manifest (what sfstream is, for orchestrators and catalogs)."""
    from sfstream.manifest import check_manifest, manifest_text, schema_text

    if print_schema:
        click.echo(schema_text(), nl=False)
        return
    if not check_it:
        click.echo(manifest_text(), nl=False)
        return
    problems = check_manifest()
    for problem in problems:
        click.echo(f"FAIL  {problem}", err=True)
    if problems:
        sys.exit(ExitCode.FAILURE)
    click.echo("ok    manifest is valid and matches the code")

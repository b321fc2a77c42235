"""`python -m sfstream.cli`: the same as the `sfstream` command."""

from sfstream.cli.main import main

main()

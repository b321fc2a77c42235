"""Where secrets come from: a small port with environment and file backends.

`SecretsStore.get(name)` returns a `SecretStr`, whose `repr` and `str` never show the value:
only `get_secret_value()` does, at the one place that sends it to Salesforce.
`SecretsStore.put(name, value)` stores a new value (a rotated refresh token) where the backend
allows it: the file backend rewrites its file atomically, the environment backend is
read-only (`SecretsReadOnlyError`). AWS Secrets Manager implements the same port
(`sfstream.secrets.aws`). Stores that keep what they read in memory (file, AWS) can read a
name again on request (`RereadableSecretsStore.reread`).
"""

from sfstream.secrets.stores import (
    EnvSecretsStore,
    FileSecretsStore,
    RereadableSecretsStore,
    SecretsReadOnlyError,
    SecretsStore,
)

__all__ = [
    "EnvSecretsStore",
    "FileSecretsStore",
    "RereadableSecretsStore",
    "SecretsReadOnlyError",
    "SecretsStore",
]

"""Docker Content Trust (notary) with every key in signerd: the ``signer-trust`` client.

The request's path, one module each: ``registry`` (tag -> manifest digest and size),
``notary_server`` (notary-server's HTTP API), ``metadata`` and ``canonical`` (notary's
TUF dialect), ``verify`` (what a notary client checks), ``keys`` (the repository's keys
in the daemon), ``repo`` (the verbs), ``inspect`` (docker's output), ``state`` (trusted
roots on disk), ``legacy`` (an old root key file, for migration) and ``cli``.
"""

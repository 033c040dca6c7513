"""The signer_api.v1 gRPC stubs, generated from protos/ by scripts/gen-protos.sh.

A distribution of its own (signer-api) so that the client and the daemon share the API
without the client installing the daemon.
"""

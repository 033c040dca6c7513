"""signerd as a drop-in notary-signer: notary's gRPC key management and signing API."""

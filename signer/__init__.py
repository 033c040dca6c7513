"""signerd: an HSM-backed signing service for TUF metadata.

A request travels: mTLS identity -> policy -> key registry -> token -> signature -> audit.
Each stage is one module (or package) of this package; the gRPC layer in ``service/`` only
translates between protobuf messages and these stages.
"""

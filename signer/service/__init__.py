"""gRPC adapters: protobuf in, the core's calls, protobuf out. No logic of their own."""

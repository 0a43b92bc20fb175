"""Protobuf and gRPC modules generated from protos/del/v1 (run `make proto`; do not edit)."""

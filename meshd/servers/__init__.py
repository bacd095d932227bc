"""The node's servers: gRPC, HTTP data, metadata wire, short-circuit socket, scheduler extender."""

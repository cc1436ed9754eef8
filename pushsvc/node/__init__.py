"""A node: the client listener's sessions, fan-out, acks and the node's lifecycle."""

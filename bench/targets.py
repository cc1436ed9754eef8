"""The fan-out issue's targets, and baselines measured on this machine type by the same method."""

TARGET_RSS_KIB = 20.0
TARGET_BROADCAST_MS = 150.0
TARGET_HANDSHAKE_US = 300.0
TARGET_GC_MS = 100.0

BASELINE_RSS = "Socket.IO 13-19 · FastAPI 30 · bare ASGI 19 · raw uvloop floor 1.3"
BASELINE_BROADCAST = "Socket.IO 252 · FastAPI 238 · raw uvloop floor 150"
BASELINE_HANDSHAKE = "Socket.IO 190-265 · FastAPI 554 · bare ASGI 296"

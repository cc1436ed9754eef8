"""HTTP edges: the client listener's plain routes and the internal API (FastAPI)."""

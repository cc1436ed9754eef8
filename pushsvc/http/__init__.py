"""HTTP edges: the client listener's HTTP phase (upgrade and plain routes) and the internal API."""

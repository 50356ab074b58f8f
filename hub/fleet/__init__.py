"""hub.fleet."""

"""hub.rpc."""

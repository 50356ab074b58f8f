"""hub.security.runtime."""

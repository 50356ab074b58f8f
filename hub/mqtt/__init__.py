"""hub.mqtt.target."""

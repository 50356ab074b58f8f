"""The edgeloop hub: datasets, tracking, registry, admin API, CLI and the services behind them."""

__version__ = "0.1.0"

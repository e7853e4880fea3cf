"""ml_collections configs: each file exposes `get_config(arg: str) -> ConfigDict`."""

"""The web retrieval system (the `web` extra): `app.create_app(Settings)` is the ASGI app that
`python -m launch.serve` runs; `db` holds users, sessions and query history; `security` the
password, token, rate-limit and upload checks; `static/` the front end."""

"""The web retrieval system: `python -m launch.serve [--export DIR] [--host H] [--port P]`.

With no arguments it serves the demo run's export (`workdirs/distill/export`, written by the
README's first command) at http://127.0.0.1:8000/, with the history database in
`workdirs/web/web.sqlite`. Needs the `web` extra (`pip install -e '.[web]'`) and, for the 3D
viewer, `npm ci --prefix sb3dr_jax/serving/web` (three.js from npm; nothing from a CDN).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

flags.DEFINE_string("export", "workdirs/distill/export", "The student export to serve.")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
flags.DEFINE_integer("port", 8000, "Port to listen on.")
flags.DEFINE_string("db", "workdirs/web/web.sqlite", "SQLite file for users and query history.")
flags.DEFINE_integer("workers", 1, "Model calls running at once.")
flags.DEFINE_integer("max_waiting", 16, "Model calls allowed to wait; more are answered 503.")
flags.DEFINE_enum(
    "secure_cookies",
    "auto",
    ["auto", "on", "off"],
    "Secure cookies: auto = when the request came over HTTPS (trusts X-Forwarded-Proto from "
    "--forwarded_allow_ips).",
)
flags.DEFINE_string("forwarded_allow_ips", "127.0.0.1", "Proxies whose X-Forwarded-* is trusted.")

FLAGS = flags.FLAGS


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import uvicorn

        from sb3dr_jax.serving.web.app import Settings, create_app
    except ImportError as e:
        sys.exit(f"error: {e.name} is missing: install the web extra with pip install -e '.[web]'")
    if not os.path.exists(os.path.join(FLAGS.export, "student.json")):
        sys.exit(
            f"error: no export in {os.path.abspath(FLAGS.export)}: train one first with "
            "`python -m launch.pretrain && python -m launch.distill` (or pass --export DIR)"
        )
    settings = Settings(
        export_dir=FLAGS.export,
        db_path=FLAGS.db,
        workers=FLAGS.workers,
        max_waiting=FLAGS.max_waiting,
        secure_cookies={"auto": None, "on": True, "off": False}[FLAGS.secure_cookies],
    )
    try:
        web = create_app(settings)
    except (FileNotFoundError, ValueError) as e:  # a broken export or database: one line
        sys.exit(f"error: {e}")
    print(f"[serve] http://{FLAGS.host}:{FLAGS.port}/ (export {web.state.export_id})", flush=True)
    uvicorn.run(
        web,
        host=FLAGS.host,
        port=FLAGS.port,
        proxy_headers=True,
        forwarded_allow_ips=FLAGS.forwarded_allow_ips,
        log_level="warning",
    )


if __name__ == "__main__":
    app.run(main)

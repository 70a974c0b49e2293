"""``python -m genie.server``: serve an execution device to genie clients (see
genie/execution/remote/server.py)."""

from genie.execution.remote.server import main

if __name__ == "__main__":
    raise SystemExit(main())

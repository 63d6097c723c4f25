"""``tokentrim-server`` / ``python -m tokentrim_server.server``: serve sessions until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from tokentrim_server.server.app import WarmupError, serve
from tokentrim_server.server.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as error:
        print(f"tokentrim-server: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config))
    except ConfigError as error:
        print(f"tokentrim-server: {error}", file=sys.stderr)
        return 2
    except WarmupError as error:  # the model cannot run its default session; the cause is in the log above
        print(f"tokentrim-server: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

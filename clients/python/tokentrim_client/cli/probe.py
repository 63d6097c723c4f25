"""``tokentrim-client info`` and ``tokentrim-client health``: one unary call each."""

from __future__ import annotations

import json
from typing import TextIO

from google.protobuf import json_format

from tokentrim_client.aio import AsyncClient
from tokentrim_client.cli.exit_codes import ExitCode


async def run_info(client: AsyncClient, out: TextIO) -> ExitCode:
    """Print the server info as JSON (the proto3 JSON mapping with field names as in the .proto)."""
    info = await client.server_info()
    fields = json_format.MessageToDict(
        info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    out.write(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    return ExitCode.OK


async def run_health(client: AsyncClient, service: str, out: TextIO) -> ExitCode:
    serving = await client.health(service)
    out.write("SERVING\n" if serving else "NOT_SERVING\n")
    return ExitCode.OK if serving else ExitCode.FAILED

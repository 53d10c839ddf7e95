"""nio_echo: the benchmark's second anchor, a matrix-nio echo fleet in one Python process.

Every account of accounts.json logs in (or restores its saved session) with encryption on
(nio's sqlite store, vodozemac), joins the rooms it is invited to and answers each text
message from someone else with the same text. After an account's first sync its user id is
appended to the ready file, which is how the benchmark driver sees the fleet up.

    python nio_echo.py <accounts.json> <ready-file>
"""

import asyncio
import json
import os
import sys

from nio import (
    AsyncClient,
    AsyncClientConfig,
    InviteMemberEvent,
    LoginResponse,
    MatrixRoom,
    RoomMessageText,
    SyncResponse,
)

LONG_POLL_MS = 30_000


async def run(account, ready_path):
    store = account["store_dir"]
    os.makedirs(store, exist_ok=True)
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    session_file = os.path.join(store, "session.json")
    client = AsyncClient(account["homeserver"], account["user_id"], store_path=store, config=config)
    if os.path.exists(session_file):
        with open(session_file) as f:
            saved = json.load(f)
        client.restore_login(saved["user_id"], saved["device_id"], saved["access_token"])
    else:
        response = await client.login(account["password"], device_name="nio-echo")
        if not isinstance(response, LoginResponse):
            raise RuntimeError(f"login failed: {response}")
        with open(session_file, "w") as f:
            json.dump(
                {
                    "user_id": response.user_id,
                    "device_id": response.device_id,
                    "access_token": response.access_token,
                },
                f,
            )

    async def echo(room: MatrixRoom, event: RoomMessageText):
        if event.sender == client.user_id:
            return
        await client.room_send(
            room.room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": event.body},
            ignore_unverified_devices=True,
        )

    async def join(room: MatrixRoom, event: InviteMemberEvent):
        if event.state_key == client.user_id and event.membership == "invite":
            await client.join(room.room_id)

    first = asyncio.Event()

    async def synced(_response: SyncResponse):
        if not first.is_set():
            first.set()
            with open(ready_path, "a") as f:
                f.write(client.user_id + "\n")

    client.add_event_callback(echo, RoomMessageText)
    client.add_event_callback(join, InviteMemberEvent)
    client.add_response_callback(synced, SyncResponse)
    await client.sync_forever(timeout=LONG_POLL_MS, loop_sleep_time=0)


async def main():
    accounts_path, ready_path = sys.argv[1], sys.argv[2]
    with open(accounts_path) as f:
        accounts = json.load(f)
    results = await asyncio.gather(
        *(run(a, ready_path) for a in accounts), return_exceptions=True
    )
    for account, result in zip(accounts, results):
        if isinstance(result, Exception):
            print(f"{account['user_id']}: {result!r}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())

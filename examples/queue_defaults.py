"""A queue's settings and their defaults, and the size limit a new queue starts with."""
import asyncio

import tether


async def main():
    async with tether.QueueManager.open() as qm:
        settings = await qm.create_queue("orders")          # every default
        for name in ("time_to_live", "max_message_size", "receive_error_handling",
                     "receive_retry_count", "max_retry_cycles", "retry_cycle_delay",
                     "validity_duration"):
            print(f"{name} = {getattr(settings, name)!r}")
        try:
            await qm.send("orders", bytes(100_000))
        except tether.QueueMessageTooLarge as error:
            print("QueueMessageTooLarge:", error)
        await qm.create_queue("uploads", max_message_size=4 * 1024 * 1024, time_to_live=None,
                              receive_error_handling="move")  # up to 16 MiB; never expire
        print("uploads:", await qm.send("uploads", bytes(100_000)) is not None)


asyncio.run(main())

# Expected output:
#   time_to_live = 86400.0
#   max_message_size = 65536
#   receive_error_handling = 'fault'
#   receive_retry_count = 5
#   max_retry_cycles = 2
#   retry_cycle_delay = 1800.0
#   validity_duration = 300.0
#   QueueMessageTooLarge: message of 100000 bytes is over max_message_size 65536 of queue 'orders'
#   uploads: True

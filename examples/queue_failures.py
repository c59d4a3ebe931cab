"""What happens to messages nobody takes, or that keep failing: time-to-live and the
dead-letter queue, retries, and a poison message (which by default stops the queue)."""
import asyncio

import tether


async def main():
    async with tether.QueueManager.open() as qm:           # no directory: in memory
        # Every message expires after time_to_live (default: 1 day) into $dead.
        await qm.create_queue("reports", time_to_live=0.2)
        await qm.send("reports", b"stale report")
        await asyncio.sleep(0.5)
        dead = await qm.receive("$dead", timeout=5)
        print("dead letter:", dead.body, dead.dead_letter_reason, "from", dead.dead_letter_source)
        await dead.complete()

        # A message that fails (abandoned, or its lock ran out) is retried: receive_retry_count
        # times at once, then after retry_cycle_delay (default 30 min) in `;retry`, for
        # max_retry_cycles cycles. Then receive_error_handling (default "fault") applies.
        await qm.create_queue("jobs", receive_retry_count=1, max_retry_cycles=0)
        await qm.send("jobs", b"bad job")
        await qm.send("jobs", b"good job")
        for _ in range(2):                                 # (1 + receive_retry_count) deliveries
            msg = await qm.receive("jobs", timeout=5)
            await msg.abandon()
        try:
            await qm.receive("jobs", timeout=5)
        except tether.PoisonMessage as error:              # "fault": the queue stops
            print("PoisonMessage:", error)
        poison = await qm.receive("jobs;poison", timeout=5)    # deal with it...
        print("poisoned:", poison.body, "delivery", poison.delivery_count)
        await poison.complete()
        msg = await qm.receive("jobs", timeout=5)          # ...and the queue delivers again
        print("then:", msg.body)
        await msg.complete()

        # "move" parks a poison message in `;poison` and goes on; "drop" and "reject" exist too.
        await qm.create_queue("events", receive_retry_count=0, max_retry_cycles=0,
                              receive_error_handling="move")
        await qm.send_many("events", [b"bad event", b"good event"])
        await (await qm.receive("events", timeout=5)).abandon()
        print("next:", (await qm.receive("events", timeout=5)).body,
              "poison:", (await qm.queue_info("events")).poison)


asyncio.run(main())

# Expected output:
#   dead letter: b'stale report' expired from reports
#   PoisonMessage: queue 'jobs' stopped delivering: message ... failed 2 deliveries; receive it from 'jobs;poison' to resume
#   poisoned: b'bad job' delivery 3
#   then: b'good job'
#   next: b'good event' poison: 1

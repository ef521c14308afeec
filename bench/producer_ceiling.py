"""What one librdkafka producer alone pushes into Tansu on this machine: the drain's ceiling.

    bench/.venv/bin/python bench/producer_ceiling.py [COUNT] [ROUNDS]     (100000 messages, 3 rounds)

COUNT messages shaped like a drain's (single-hint notifications: a JSON value with the hint message's
fields, about 450 bytes, a numeric key, the six headers of a hint message) are built first, then
produced as fast as the producer takes them, with the bridge's producer settings (idempotent,
acks=all, lz4, linger.ms=5), until every one is acknowledged. Prints messages/s and the CPU seconds
of this process (librdkafka's threads included) per message; a fresh broker per round.
"""

import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
import bench as b  # noqa: E402


def messages(count):
    subscription = str(uuid.uuid4())
    out = []
    for i in range(count):
        notification, ext = str(uuid.uuid4()), str(100000 + i % 5000)
        value = (
            '{"uuid":"%s","event":"/restapi/v1.0/account/~/extension/%s","timestamp":"2026-11-28T10:00:00.000Z",'
            '"subscriptionId":"%s","ownerId":"%s","accountId":"~","extensionId":"%s","eventType":"Update",'
            '"hint":"CompanyNumbers","targetApi":"account/~/extension/~/phone-number",'
            '"resourcePath":"/restapi/v1.0/account/~/extension/%s/phone-number","hints":["CompanyNumbers"],'
            '"receivedAt":"2026-11-28T10:00:00.672227592Z"}'
        ) % (notification, ext, subscription, ext, ext, ext)
        headers = [
            ("rc-message-id", f"{notification}:{ext}:CompanyNumbers:hints.company-numbers".encode()),
            ("rc-notification-uuid", notification.encode()),
            ("rc-event-type", b"Update"),
            ("rc-hint", b"CompanyNumbers"),
            ("rc-subscription-id", subscription.encode()),
            ("content-type", b"application/json"),
        ]
        out.append((ext.encode(), value.encode(), headers))
    return out


def round_once(batch):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    tansu, brokers = b.start_tansu()
    try:
        admin = AdminClient({"bootstrap.servers": brokers})
        admin.create_topics([NewTopic("ceiling", 1, 1)])["ceiling"].result()
        producer = Producer({
            "bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all",
            "compression.type": "lz4", "linger.ms": 5, "message.timeout.ms": 30000, "log_level": 3,
        })
        producer.produce("ceiling", b"warm-up", b"0")
        producer.flush(30)
        delivered = [0]

        def on_delivery(err, _msg):
            delivered[0] += err is None

        cpu0, t0 = os.times(), time.time()
        for key, value, headers in batch:
            while True:
                try:
                    producer.produce("ceiling", value, key, headers=headers, on_delivery=on_delivery)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.01)
            producer.poll(0)
        producer.flush(120)
        seconds, cpu1 = time.time() - t0, os.times()
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        return delivered[0], seconds, cpu
    finally:
        b.stop(tansu)


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    b.WORK.mkdir(parents=True, exist_ok=True)
    batch = messages(count)
    for i in range(rounds):
        delivered, seconds, cpu = round_once(batch)
        b.log(f"round {i}: {delivered} of {count} acknowledged in {seconds:.2f} s: {delivered / seconds:.0f} msgs/s, "
              f"{1e6 * cpu / max(delivered, 1):.1f} us of CPU per message (this process, librdkafka included); "
              f"value {len(batch[0][1])} B")


if __name__ == "__main__":
    main()

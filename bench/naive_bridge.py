"""The baseline: the bridge a user would write in an afternoon.

aiohttp for HTTP, confluent-kafka (librdkafka) for Kafka, one message per hint on the same topics as
rc-kafka-bridge, and the answer only once Kafka acknowledged every message (no spool, no dedup, no
metrics). Used by bench/bench.py as the "naive" baseline:

    python bench/naive_bridge.py --brokers 127.0.0.1:9092 --listen 127.0.0.1:8081 [--topic-prefix ringcentral.]
"""

import argparse
import asyncio
import json
import threading
from datetime import datetime, timezone

from aiohttp import web
from confluent_kafka import Producer

HINT_TOPICS = {
    "AccountSettings": ["account"],
    "AccountStatus": ["account"],
    "AnsweringRules": ["account.extension"],
    "ExtensionInfo": ["account.extension"],
    "CompanyNumbers": ["account.extension.phone-number"],
    "DialingPlan": ["account.dialing-plan"],
    "Features": ["account.extension.features"],
    "Limits": ["account.extension.features"],
    "Permissions": ["account.extension.features"],
    "ProfileImage": ["account.extension.profile-image"],
    "VideoConfiguration": ["account.extension"],
    "CallQueueMembersChange": ["account.extension.call-queues", "account.call-queues.bulk-assign"],
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--listen", default="127.0.0.1:8081")
    parser.add_argument("--topic-prefix", default="ringcentral.")
    args = parser.parse_args()

    producer = Producer(
        {"bootstrap.servers": args.brokers, "acks": "all", "linger.ms": 5, "compression.type": "lz4"}
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    # librdkafka calls delivery callbacks from poll(): a thread polls and hands results to the loop.
    def poll_forever():
        while True:
            producer.poll(0.1)

    threading.Thread(target=poll_forever, daemon=True).start()

    def send(topic, key, value):
        future = loop.create_future()

        def delivered(err, _msg):
            if err is None:
                loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))
            else:
                exc = Exception(str(err))
                loop.call_soon_threadsafe(lambda: future.done() or future.set_exception(exc))

        producer.produce(topic, key=key, value=value, on_delivery=delivered)
        return future

    async def webhook(request):
        token = request.headers.get("Validation-Token")
        body = await request.read()
        if not body and token:
            return web.Response(headers={"Validation-Token": token})
        try:
            n = json.loads(body)
        except ValueError:
            return web.json_response({"error": "bad json"}, status=400)
        ext = n.get("body", {}).get("extensionId", "")
        received_at = datetime.now(timezone.utc).isoformat()
        futures = []
        for hint in n.get("body", {}).get("hints", []):
            for suffix in HINT_TOPICS.get(hint, ["unrouted"]):
                value = dict(n, extensionId=ext, hint=hint, receivedAt=received_at)
                futures.append(send(args.topic_prefix + suffix, str(ext), json.dumps(value)))
        try:
            await asyncio.wait_for(asyncio.gather(*futures), timeout=10)
        except Exception as e:  # noqa: BLE001 - any failure is a 503
            return web.json_response({"error": str(e)}, status=503)
        return web.json_response({"status": "accepted"})

    async def healthz(_request):
        return web.json_response({"status": "alive"})

    app = web.Application(client_max_size=65536)
    app.add_routes([web.post("/webhook", webhook), web.get("/healthz", healthz)])
    host, port = args.listen.rsplit(":", 1)
    web.run_app(app, host=host, port=int(port), loop=loop, print=None, access_log=None)


if __name__ == "__main__":
    main()

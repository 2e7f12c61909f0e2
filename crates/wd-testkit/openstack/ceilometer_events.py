"""Receive notifications the way Ceilometer does, and convert them with
Ceilometer's own event converter and stock event definitions.

Usage: ceilometer_events.py TRANSPORT_URL EXCHANGE TOPIC POOL [CONFIG_FILE]

CONFIG_FILE, if given, is read as Ceilometer reads its own configuration
(for example `[oslo_messaging_rabbit] rabbit_quorum_queue = true`, or TLS).

An oslo.messaging notification listener on EXCHANGE/TOPIC (queue POOL, so
runs never share a queue) hands every `info` notification to Ceilometer's
converter, and prints one JSON line per event: its event_type, message_id,
traits, and the raw context and publisher_id it came with. It prints `READY`
once its queue is bound, and stops on end of stdin.
"""

import json
import sys
import threading

import oslo_messaging
from ceilometer import service
from ceilometer.event import converter
from stevedore import extension

url, exchange, topic, pool = sys.argv[1:5]
config_files = sys.argv[5:6]
conf = service.prepare_service(argv=["ceilometer-events"], config_files=config_files)
conv = converter.setup_events(
    conf, extension.ExtensionManager(namespace="ceilometer.event.trait_plugin")
)
lock = threading.Lock()


class Endpoint:
    """Ceilometer's event endpoint handles info (and error) only."""

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        event = conv.to_event(
            "info",
            {
                "ctxt": ctxt,
                "publisher_id": publisher_id,
                "event_type": event_type,
                "payload": payload,
                "metadata": metadata,
            },
        )
        out = {
            "event_type": event_type,
            "publisher_id": publisher_id,
            "ctxt": ctxt,
            "metadata_message_id": metadata.get("message_id"),
            "event": None,
        }
        if event is not None:
            out["event"] = {
                "event_type": event.event_type,
                "message_id": event.message_id,
                "traits": {t.name: t.value for t in event.traits},
            }
        with lock:
            print(json.dumps(out, default=str), flush=True)
        return oslo_messaging.NotificationResult.HANDLED


transport = oslo_messaging.get_notification_transport(conf, url=url)
listener = oslo_messaging.get_notification_listener(
    transport,
    [oslo_messaging.Target(topic=topic, exchange=exchange)],
    [Endpoint()],
    executor="threading",
    pool=pool,
)
listener.start()
print("READY", flush=True)
sys.stdin.read()
listener.stop()
listener.wait()

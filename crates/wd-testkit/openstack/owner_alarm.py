"""Run the owner-alarm path of OpenStack on this machine, with its own code:
ceilometer-agent-notification (event pipeline publishing to
notifier://?topic=alarm.all), aodh-listener and aodh-notifier on SQLite,
and a local HTTP receiver as the alarm action.

Usage: owner_alarm.py WORKDIR TRANSPORT_URL OWNER_PROJECT OTHER_PROJECT INSTANCE SETTLE

Run by `wd_testkit::openstack::OwnerAlarm`.

Creates two event alarms on `compute.instance.watchdog`: the owner's (project
OWNER_PROJECT, query traits.instance_id == INSTANCE, action .../owner) and
another project's (OTHER_PROJECT, no query, action .../other). Prints
`READY` once every service runs (SETTLE seconds after starting them, time
for them to bind their queues), then one line `POST <path> <json body>` per
alarm notification the receiver gets. Ends its services on end of stdin.
"""

import datetime
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid

workdir, url, owner, other, instance, settle = sys.argv[1:7]
venv_bin = os.path.dirname(sys.executable)
os.makedirs(workdir, exist_ok=True)
out_lock = threading.Lock()


def say(line):
    with out_lock:
        print(line, flush=True)


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(min(length, 1 << 20)).decode("utf-8", "replace")
        self.send_response(200)
        self.end_headers()
        say("POST %s %s" % (self.path, json.dumps(json.loads(body))))

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
receiver = "http://127.0.0.1:%d" % server.server_address[1]

db = os.path.join(workdir, "aodh.db")
with open(os.path.join(workdir, "aodh.conf"), "w") as f:
    f.write(
        "[DEFAULT]\ntransport_url = %s\n"
        # Ceilometer's notifier publisher sends on its control exchange.
        "control_exchange = ceilometer\n"
        "[database]\nconnection = sqlite:///%s\n"
        "[listener]\nbatch_size = 1\nbatch_timeout = 1\n"
        "[notifier]\nbatch_size = 1\nbatch_timeout = 1\n" % (url, db)
    )
with open(os.path.join(workdir, "event_pipeline.yaml"), "w") as f:
    f.write(
        "sources:\n  - name: event_source\n    events:\n      - '*'\n"
        "    sinks:\n      - event_sink\n"
        "sinks:\n  - name: event_sink\n    publishers:\n"
        "      - notifier://?topic=alarm.all\n"
    )
with open(os.path.join(workdir, "ceilometer.conf"), "w") as f:
    f.write(
        "[DEFAULT]\ntransport_url = %s\nevent_pipeline_cfg_file = %s\n"
        "[notification]\npipelines = event\nworkers = 1\n"
        % (url, os.path.join(workdir, "event_pipeline.yaml"))
    )
aodh_conf = ["--config-file", os.path.join(workdir, "aodh.conf")]
subprocess.run(
    [os.path.join(venv_bin, "aodh-dbsync")] + aodh_conf,
    check=True,
    stdout=subprocess.DEVNULL,
    stderr=open(os.path.join(workdir, "dbsync.log"), "w"),
)

from oslo_config import cfg  # noqa: E402
from aodh import service as aodh_service  # noqa: E402
from aodh import storage  # noqa: E402
from aodh.storage import models  # noqa: E402

conf = aodh_service.prepare_service(argv=aodh_conf, config_files=[], with_gmr=False)
conn = storage.get_connection_from_config(conf)
now = datetime.datetime.utcnow()
for project, name, query in [
    (
        owner,
        "owner",
        [{"field": "traits.instance_id", "op": "eq", "type": "string", "value": instance}],
    ),
    (other, "other", []),
]:
    conn.create_alarm(
        models.Alarm(
            alarm_id=str(uuid.uuid4()),
            type="event",
            enabled=True,
            name="%s-watchdog" % name,
            description="",
            timestamp=now,
            user_id="u-" + name,
            project_id=project,
            state="insufficient data",
            state_timestamp=now,
            state_reason="",
            ok_actions=[],
            alarm_actions=["%s/%s" % (receiver, name)],
            insufficient_data_actions=[],
            repeat_actions=True,
            rule={"event_type": "compute.instance.watchdog", "query": query},
            time_constraints=[],
            severity="low",
        )
    )

procs = []
for name, cmd in [
    ("aodh-listener", [os.path.join(venv_bin, "aodh-listener")] + aodh_conf),
    ("aodh-notifier", [os.path.join(venv_bin, "aodh-notifier")] + aodh_conf),
    (
        "ceilometer-agent-notification",
        [
            os.path.join(venv_bin, "ceilometer-agent-notification"),
            "--config-file",
            os.path.join(workdir, "ceilometer.conf"),
        ],
    ),
]:
    log = open(os.path.join(workdir, name + ".log"), "w")
    procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True))

# The services bind their queues within a few seconds of starting.
time.sleep(float(settle))
for p in procs:
    if p.poll() is not None:
        say("DIED %s %s" % (p.args[0], p.returncode))
say("READY")
sys.stdin.read()
for p in procs:
    p.terminate()
for p in procs:
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
server.shutdown()

"""Host and cloud identity (kestrel_raw/context/host.py).

No real cloud is reachable from here (and this machine has no DMI at all).  The metadata services are
therefore stood in for by a local HTTP server on loopback that speaks each provider's documented protocol
and refuses what the real service refuses: AWS IMDSv2 (a token from ``PUT /latest/api/token``, which needs
``X-aws-ec2-metadata-token-ttl-seconds``; GETs without ``X-aws-ec2-metadata-token`` get 401), GCP
(``Metadata-Flavor: Google`` required, 403 without it, and echoed in the answer), Azure (``Metadata: true``
required, 400 without it; ``api-version`` required).  The DMI directory and the base URL are injected.
"""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kestrel_raw.context import host
from kestrel_raw.context.host import (
    AWS, AZURE, GCP, Cloud, cloud_identity, detect_provider, host_identity, read_dmi, start_host_identity,
)

AWS_DOC = {"instanceId": "i-0abc1234def567890", "region": "eu-west-3", "availabilityZone": "eu-west-3b",
           "accountId": "123456789012", "imageId": "ami-0123456789abcdef0"}
GCP_ID, GCP_ZONE = "4520031799277581759", "projects/123456789/zones/europe-west1-d"
AZURE_COMPUTE = {"vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6", "location": "westeurope", "zone": "2",
                 "name": "vm1", "vmSize": "Standard_D2s_v5"}


class Metadata(BaseHTTPRequestHandler):
    """One handler for the three services; ``server.provider`` says which one it is."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):   # quiet
        pass

    def _send(self, status: int, body: bytes | str, headers=()):
        body = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self):
        self.server.requests.append((self.command, self.path, dict(self.headers)))
        if self.server.stall:
            time.sleep(self.server.stall)

    def do_PUT(self):
        self._record()
        if self.server.provider != AWS or self.path != "/latest/api/token":
            return self._send(404, "not found")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        if ttl is None or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return self._send(400, "Missing or invalid X-aws-ec2-metadata-token-ttl-seconds")
        if "X-Forwarded-For" in self.headers:
            return self._send(403, "Forbidden")
        self._send(200, self.server.token)

    def do_GET(self):
        self._record()
        p = self.server.provider
        if p == AWS:
            if self.headers.get("X-aws-ec2-metadata-token") != self.server.token:
                return self._send(401, "Unauthorized")      # IMDSv2 only: no token, no answer
            if self.path == "/latest/dynamic/instance-identity/document":
                return self._send(200, json.dumps(AWS_DOC))
        elif p == GCP:
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._send(403, "Missing Metadata-Flavor:Google header.")
            flavor = [] if self.server.no_flavor else [("Metadata-Flavor", "Google")]
            answers = {"/computeMetadata/v1/instance/id": GCP_ID, "/computeMetadata/v1/instance/zone": GCP_ZONE}
            if self.path in answers:
                return self._send(200, answers[self.path], flavor)
        elif p == AZURE:
            if self.headers.get("Metadata") != "true":
                return self._send(400, json.dumps({"error": "Bad request. Required metadata header not specified"}))
            path, _, query = self.path.partition("?")
            if "api-version=" not in query:
                return self._send(400, json.dumps({"error": "Bad request. api-version was not specified"}))
            if path == "/metadata/instance/compute":
                return self._send(200, json.dumps(AZURE_COMPUTE))
        self._send(404, "not found")


@pytest.fixture
def metadata():
    servers = []

    def serve(provider, stall=0.0, no_flavor=False):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Metadata)
        srv.provider, srv.stall, srv.no_flavor = provider, stall, no_flavor
        srv.token, srv.requests = "AQAEAFake-token==", []
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(srv)
        srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
        return srv
    yield serve
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def dmi(tmp_path, **values):
    d = tmp_path / "dmi"
    d.mkdir(parents=True)
    for k, v in values.items():
        (d / k).write_text(v + "\n")
    return str(d)


AWS_DMI = dict(sys_vendor="Amazon EC2", product_name="m5.large", bios_vendor="Amazon EC2",
               board_asset_tag="i-0abc1234def567890")
GCP_DMI = dict(sys_vendor="Google", product_name="Google Compute Engine", bios_vendor="Google")
AZURE_DMI = dict(sys_vendor="Microsoft Corporation", product_name="Virtual Machine",
                 chassis_asset_tag="7783-7084-3265-9085-8269-3286-77")


def test_the_fake_services_refuse_what_the_real_ones_refuse(metadata):
    """The stand-ins are strict, so that a client leaving out a header or the token would fail the tests."""
    def status(req):
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    aws, gcp, azure = metadata(AWS), metadata(GCP), metadata(AZURE)
    assert status(urllib.request.Request(aws.url + "/latest/api/token", method="PUT")) == 400
    assert status(aws.url + "/latest/dynamic/instance-identity/document") == 401
    assert status(gcp.url + "/computeMetadata/v1/instance/id") == 403
    assert status(azure.url + "/metadata/instance/compute?api-version=2021-02-01") == 400
    assert status(urllib.request.Request(azure.url + "/metadata/instance/compute",
                                         headers={"Metadata": "true"})) == 400


def test_aws_imdsv2(tmp_path, metadata):
    srv = metadata(AWS)
    cloud, reason = cloud_identity(dmi_dir=dmi(tmp_path, **AWS_DMI), base_url=srv.url)
    assert cloud == Cloud("aws", "i-0abc1234def567890", "eu-west-3", "eu-west-3b"), reason
    (m1, p1, h1), (m2, p2, h2) = srv.requests
    assert (m1, p1, h1["X-aws-ec2-metadata-token-ttl-seconds"]) == ("PUT", "/latest/api/token", "60")
    assert (m2, p2, h2["X-aws-ec2-metadata-token"]) == ("GET", "/latest/dynamic/instance-identity/document",
                                                        srv.token)
    assert cloud.to_json() == {"provider": "aws", "instance_id": "i-0abc1234def567890", "region": "eu-west-3",
                               "zone": "eu-west-3b"}


def test_gcp(tmp_path, metadata):
    srv = metadata(GCP)
    cloud, reason = cloud_identity(dmi_dir=dmi(tmp_path, **GCP_DMI), base_url=srv.url)
    assert cloud == Cloud("gcp", GCP_ID, "europe-west1", "europe-west1-d"), reason
    assert [(m, p, h["Metadata-Flavor"]) for m, p, h in srv.requests] == [
        ("GET", "/computeMetadata/v1/instance/id", "Google"), ("GET", "/computeMetadata/v1/instance/zone", "Google")]


def test_gcp_answer_without_its_flavor_header_is_not_trusted(tmp_path, metadata):
    srv = metadata(GCP, no_flavor=True)
    cloud, reason = cloud_identity(dmi_dir=dmi(tmp_path, **GCP_DMI), base_url=srv.url)
    assert cloud is None and "Metadata-Flavor: Google" in reason


def test_azure(tmp_path, metadata):
    srv = metadata(AZURE)
    cloud, reason = cloud_identity(dmi_dir=dmi(tmp_path, **AZURE_DMI), base_url=srv.url)
    assert cloud == Cloud("azure", AZURE_COMPUTE["vmId"], "westeurope", "2"), reason
    [(m, p, h)] = srv.requests
    assert (m, p, h["Metadata"]) == ("GET", "/metadata/instance/compute?api-version=2021-02-01", "true")


@pytest.mark.parametrize("values,provider", [
    (AWS_DMI, AWS), (GCP_DMI, GCP), (AZURE_DMI, AZURE),
    (dict(sys_vendor="Xen", bios_version="4.11.amazon"), AWS),                 # an older Xen-based EC2 instance
    (dict(sys_vendor="Microsoft Corporation", product_name="Virtual Machine"), None),   # Hyper-V, not Azure
    (dict(sys_vendor="QEMU", product_name="Standard PC (Q35 + ICH9, 2009)"), None),
    (dict(sys_vendor="Dell Inc.", product_name="PowerEdge R740"), None),
    ({}, None),
])
def test_detect_provider_from_dmi(tmp_path, values, provider):
    assert detect_provider(read_dmi(dmi(tmp_path, **values))) == provider


def test_xen_hypervisor_uuid_says_ec2():
    assert detect_provider({"sys_vendor": "Xen"}, "ec2e1916-9099-7caf-fd21-012345abcdef") == AWS
    assert detect_provider({"sys_vendor": "Xen"}, "4a3c-not-amazon") is None


def test_off_a_cloud_nothing_is_sent(tmp_path, metadata):
    srv = metadata(AWS)
    for values in (dict(sys_vendor="QEMU"), {}):
        cloud, reason = cloud_identity(dmi_dir=dmi(tmp_path / str(len(values)), **values),
                                       hypervisor_uuid=str(tmp_path / "none"), base_url=srv.url)
        assert cloud is None and "not asked over the network" in reason
    cloud, reason = cloud_identity(dmi_dir=str(tmp_path / "no-such-dir"), hypervisor_uuid=str(tmp_path / "none"),
                                   base_url=srv.url)
    assert cloud is None and srv.requests == []


def test_a_silent_service_costs_the_deadline_not_more(tmp_path, metadata):
    srv = metadata(AWS, stall=5.0)
    t0 = time.monotonic()
    cloud, reason = cloud_identity(dmi_dir=dmi(tmp_path, **AWS_DMI), base_url=srv.url, deadline=0.3)
    took = time.monotonic() - t0
    assert cloud is None and "timed out" in reason.lower() and took < 1.5, (took, reason)


def test_nothing_listening_is_a_reason_not_an_exception(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                   # a port with nothing behind it: connection refused
    cloud, reason = cloud_identity(dmi_dir=dmi(tmp_path, **GCP_DMI), base_url=f"http://127.0.0.1:{port}")
    assert cloud is None and "ConnectionRefusedError" in reason


def test_host_identity_here(tmp_path):
    ident = host_identity(dmi_dir=str(tmp_path / "no-dmi"), hypervisor_uuid=str(tmp_path / "none"))
    u = os.uname()
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    assert (ident.hostname, ident.kernel, ident.arch, ident.boot_id) == (u.nodename, u.release, u.machine, boot_id)
    if os.path.exists(host.MACHINE_ID):
        with open(host.MACHINE_ID) as f:
            assert ident.machine_id == f.read().strip()
    assert ident.cloud is None
    assert list(ident.to_json()) == ["hostname", "machine_id", "boot_id", "kernel", "arch", "cloud"]


def test_the_lookup_runs_on_a_thread_and_waits_only_as_asked(tmp_path, metadata):
    srv = metadata(AZURE, stall=0.5)
    t0 = time.monotonic()
    lookup = start_host_identity(dmi_dir=dmi(tmp_path, **AZURE_DMI), base_url=srv.url)
    assert lookup.result(0) is None and not lookup.done and time.monotonic() - t0 < 0.2
    ident = lookup.result(5)
    assert lookup.done and ident.cloud == Cloud("azure", AZURE_COMPUTE["vmId"], "westeurope", "2")

"""Host and cloud identity, for the ``status`` event at start: hostname, machine id, boot id, kernel, arch,
and the cloud instance (provider, instance id, region, zone) or None.

The cloud is found in two steps, so that a host off any cloud never touches the network:

1. DMI (/sys/class/dmi/id, which the firmware fills and the kernel exposes) names the provider: Amazon EC2
   (``sys_vendor``/``bios_vendor`` "Amazon EC2", or ``bios_version`` "...amazon" on older Xen instances,
   also /sys/hypervisor/uuid starting "ec2"), Google (``sys_vendor`` "Google", ``product_name`` "Google
   Compute Engine"), Azure (``sys_vendor`` "Microsoft Corporation" with ``chassis_asset_tag``
   7783-7084-3265-9085-8269-3286-77, which is Azure's; a Hyper-V VM elsewhere has the vendor but not the tag).
   No match: ``cloud`` is None, with the reason, and nothing is sent.
2. Only then the provider's instance metadata service, with its documented protocol:
   - AWS IMDSv2: ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds``, then
     ``GET /latest/dynamic/instance-identity/document`` with ``X-aws-ec2-metadata-token``: a JSON document
     with ``instanceId``, ``region``, ``availabilityZone``.
   - GCP: ``GET /computeMetadata/v1/instance/id`` and ``.../instance/zone`` (``projects/N/zones/Z``) with
     ``Metadata-Flavor: Google``; the answer must carry the same header.  Asked at 169.254.169.254, the
     server's address (metadata.google.internal resolves to it), so no DNS lookup can stall it.
   - Azure: ``GET /metadata/instance/compute?api-version=2021-02-01`` with ``Metadata: true``: JSON with
     ``vmId``, ``location``, ``zone``.

It runs under one total deadline (``DEFAULT_DEADLINE``), never raises (a failure is ``cloud=None`` with
``cloud_reason`` saying why), and is meant to run off the event path: ``start_host_identity()`` runs it on a
thread and returns a handle whose ``result(timeout)`` waits at most ``timeout`` (None while unfinished).
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

DMI_DIR = "/sys/class/dmi/id"
HYPERVISOR_UUID = "/sys/hypervisor/uuid"
MACHINE_ID = "/etc/machine-id"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
METADATA_URL = "http://169.254.169.254"
DEFAULT_DEADLINE = 2.0          # seconds for the whole cloud lookup
AWS_TOKEN_TTL = 60              # seconds the IMDSv2 token lives: it is used for one request right away
AZURE_API_VERSION = "2021-02-01"
AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
MAX_ANSWER = 1 << 16            # bytes read of one metadata answer (the largest used is ~2 KiB)

AWS, GCP, AZURE = "aws", "gcp", "azure"


@dataclass(frozen=True, slots=True)
class Cloud:
    provider: str
    instance_id: str
    region: str | None
    zone: str | None

    def to_json(self) -> dict:
        return {"provider": self.provider, "instance_id": self.instance_id, "region": self.region,
                "zone": self.zone}


@dataclass(frozen=True, slots=True)
class HostIdentity:
    hostname: str
    machine_id: str | None
    boot_id: str | None
    kernel: str
    arch: str
    cloud: Cloud | None
    cloud_reason: str            # how the cloud was found, or why there is none

    def to_json(self) -> dict:
        """The ``status`` event's keys (issue 14): hostname, machine_id, boot_id, kernel, arch, cloud."""
        return {"hostname": self.hostname, "machine_id": self.machine_id, "boot_id": self.boot_id,
                "kernel": self.kernel, "arch": self.arch,
                "cloud": self.cloud.to_json() if self.cloud is not None else None}


# --- step 1: DMI ------------------------------------------------------------------------------------------

def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def read_dmi(dmi_dir: str = DMI_DIR) -> dict[str, str]:
    """The DMI strings that name a provider (those readable; product_uuid and serials need root and are
    not used)."""
    out = {}
    for name in ("sys_vendor", "product_name", "product_version", "bios_vendor", "bios_version",
                 "board_vendor", "chassis_vendor", "chassis_asset_tag"):
        value = _read_text(os.path.join(dmi_dir, name))
        if value:
            out[name] = value
    return out


def detect_provider(dmi: dict[str, str], hypervisor_uuid: str | None = None) -> str | None:
    """The cloud provider the DMI strings (and Xen's hypervisor uuid) name, or None.  Pure."""
    vendor = dmi.get("sys_vendor", "")
    if "Amazon EC2" in (vendor, dmi.get("bios_vendor"), dmi.get("board_vendor"), dmi.get("chassis_vendor")) \
            or "amazon" in dmi.get("bios_version", "").lower() \
            or (hypervisor_uuid or "").lower().startswith("ec2"):
        return AWS
    if vendor == "Google" or dmi.get("product_name") == "Google Compute Engine":
        return GCP
    if vendor == "Microsoft Corporation" and dmi.get("chassis_asset_tag") == AZURE_ASSET_TAG:
        return AZURE
    return None


# --- step 2: the metadata services ---------------------------------------------------------------------------

class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the deadline for the cloud lookup passed")
        return left


def _http(base: str, method: str, path: str, headers: dict, deadline: _Deadline) -> tuple[int, dict, bytes]:
    """One request.  Socket timeouts bound each operation, not their sum: every one gets what is left of the
    deadline, and the body is read piece by piece (at most ``MAX_ANSWER`` bytes) checking it in between."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=deadline.left())
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        body = b""
        while len(body) < MAX_ANSWER:
            conn.sock.settimeout(deadline.left())     # each read gets what is left of the deadline
            chunk = resp.read1(MAX_ANSWER - len(body))
            if not chunk:
                break
            body += chunk
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def _ok(status: int, body: bytes, what: str) -> bytes:
    if status != 200:
        raise ValueError(f"{what} answered HTTP {status}: {body[:120]!r}")
    return body


def _aws(base: str, deadline: _Deadline) -> Cloud:
    status, _, token = _http(base, "PUT", "/latest/api/token",
                             {"X-aws-ec2-metadata-token-ttl-seconds": str(AWS_TOKEN_TTL)}, deadline)
    token = _ok(status, token, "IMDSv2 token PUT").decode("ascii").strip()
    status, _, body = _http(base, "GET", "/latest/dynamic/instance-identity/document",
                            {"X-aws-ec2-metadata-token": token}, deadline)
    doc = json.loads(_ok(status, body, "IMDSv2 instance-identity document"))
    return Cloud(AWS, doc["instanceId"], doc.get("region"), doc.get("availabilityZone"))


def _gcp(base: str, deadline: _Deadline) -> Cloud:
    values = {}
    for item in ("id", "zone"):
        status, headers, body = _http(base, "GET", f"/computeMetadata/v1/instance/{item}",
                                      {"Metadata-Flavor": "Google"}, deadline)
        _ok(status, body, f"GCP metadata instance/{item}")
        if headers.get("metadata-flavor") != "Google":
            raise ValueError("the answer lacks 'Metadata-Flavor: Google': not GCP's metadata server")
        values[item] = body.decode("utf-8").strip()
    zone = values["zone"].rsplit("/", 1)[-1]
    region = zone.rsplit("-", 1)[0] if "-" in zone else None
    return Cloud(GCP, values["id"], region, zone or None)


def _azure(base: str, deadline: _Deadline) -> Cloud:
    status, _, body = _http(base, "GET", f"/metadata/instance/compute?api-version={AZURE_API_VERSION}",
                            {"Metadata": "true"}, deadline)
    doc = json.loads(_ok(status, body, "Azure IMDS instance/compute"))
    return Cloud(AZURE, doc["vmId"], doc.get("location") or None, doc.get("zone") or None)


_QUERIES = {AWS: _aws, GCP: _gcp, AZURE: _azure}


def cloud_identity(*, dmi_dir: str = DMI_DIR, hypervisor_uuid: str = HYPERVISOR_UUID,
                   base_url: str = METADATA_URL, deadline: float = DEFAULT_DEADLINE) -> tuple[Cloud | None, str]:
    """(the cloud instance, how it was found) or (None, why not).  Never raises; returns within about
    ``deadline`` seconds; sends nothing unless DMI names a provider."""
    try:
        provider = detect_provider(read_dmi(dmi_dir), _read_text(hypervisor_uuid))
    except Exception as e:   # never fail the start: this is information, not a requirement
        return None, f"DMI could not be read: {e!r}"
    if provider is None:
        return None, f"DMI ({dmi_dir}) names no cloud provider: not asked over the network"
    try:
        cloud = _QUERIES[provider](base_url, _Deadline(deadline))
    except (OSError, ValueError, KeyError, TypeError, UnicodeError, http.client.HTTPException) as e:
        return None, f"DMI says {provider}, but its metadata service at {base_url} did not answer usefully: {e!r}"
    return cloud, f"DMI says {provider}; instance metadata from {base_url}"


# --- the host ---------------------------------------------------------------------------------------------

def host_identity(*, dmi_dir: str = DMI_DIR, hypervisor_uuid: str = HYPERVISOR_UUID,
                  base_url: str = METADATA_URL, deadline: float = DEFAULT_DEADLINE) -> HostIdentity:
    """Everything at once, on the calling thread (at most about ``deadline`` seconds)."""
    u = os.uname()
    cloud, reason = cloud_identity(dmi_dir=dmi_dir, hypervisor_uuid=hypervisor_uuid, base_url=base_url,
                                   deadline=deadline)
    return HostIdentity(hostname=socket.gethostname(), machine_id=_read_text(MACHINE_ID) or None,
                        boot_id=_read_text(BOOT_ID) or None, kernel=u.release, arch=u.machine, cloud=cloud,
                        cloud_reason=reason)


class HostIdentityLookup:
    """``host_identity()`` running on a daemon thread; ``result(timeout)`` waits at most ``timeout``.  Off a
    cloud (DMI names no provider) there is no network to wait for: it is done at once, with no thread."""

    def __init__(self, **kwargs) -> None:
        self._result: HostIdentity | None = None
        self._done = threading.Event()
        self._thread = None
        try:
            provider = detect_provider(read_dmi(kwargs.get("dmi_dir", DMI_DIR)),
                                       _read_text(kwargs.get("hypervisor_uuid", HYPERVISOR_UUID)))
        except Exception:  # cloud_identity says why, below
            provider = "unknown"
        if provider is None:
            self._run(**kwargs)
            return
        self._thread = threading.Thread(target=self._run, kwargs=kwargs, name="kestrel-host-identity",
                                        daemon=True)
        self._thread.start()

    def _run(self, **kwargs) -> None:
        try:
            self._result = host_identity(**kwargs)
        finally:
            self._done.set()

    def result(self, timeout: float | None = None) -> HostIdentity | None:
        """The identity, or None when it is not ready within ``timeout`` seconds (0: do not wait)."""
        self._done.wait(timeout)
        return self._result

    @property
    def done(self) -> bool:
        return self._done.is_set()


def start_host_identity(**kwargs) -> HostIdentityLookup:
    """Start ``host_identity(**kwargs)`` on a thread (call before attaching; read it after)."""
    return HostIdentityLookup(**kwargs)


__all__ = ["AWS", "AZURE", "Cloud", "GCP", "HostIdentity", "HostIdentityLookup", "cloud_identity",
           "detect_provider", "host_identity", "read_dmi", "start_host_identity"]

"""Running kestrel-raw as a service: the systemd unit and config file templates (``kestrel-raw.service``,
written by ``kestrel-raw install-service``), and readiness notification to systemd (``notify``)."""

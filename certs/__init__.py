"""TLS certificates for qemud: issuing, installing, loading and access control.

Modules (each imported on its own; this package imports nothing eagerly so that
``from certs.paths import PKIPaths`` stays cheap):

* :mod:`certs.paths`     -- where the PKI files live (``PKIPaths``), stdlib only
* :mod:`certs.issue`     -- make a CA / server / client certificate, write keys safely
* :mod:`certs.tls`       -- ``ssl.SSLContext`` factories for daemon and client
* :mod:`certs.dn`        -- the DN string format allow-lists match against
* :mod:`certs.allowlist` -- DN glob -> role access control
* :mod:`certs.install`   -- validated copy into the system/session layout
* :mod:`certs.describe`  -- human-readable certificate summary
* :mod:`certs.cli`       -- the ``qemud-certs`` command
* :mod:`certs.errors`    -- the ``CertError`` hierarchy
"""

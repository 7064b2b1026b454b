"""certs.errors: the hierarchy drawn in its docstring is the real one."""

from __future__ import annotations

import re

import certs.errors as errors
from certs.errors import CertError


def test_every_error_is_a_cert_error_and_documented() -> None:
    classes = [getattr(errors, n) for n in errors.__all__]
    assert all(issubclass(c, CertError) for c in classes)
    doc = (errors.__doc__ or "").split("Hierarchy::")[1]
    for cls in classes:
        line = next(ln for ln in doc.splitlines() if re.search(rf"\b{cls.__name__}\b", ln))
        depth = (len(line) - len(line.lstrip(" │├└─")) - 4) // 4  # 4 per tree level
        # the MRO below CertError is Exception, BaseException, object
        assert cls.__mro__.index(CertError) == depth, cls


def test_file_error_keeps_path() -> None:
    e = errors.CertFileExistsError("refusing x", "/tmp/x")
    assert isinstance(e, errors.CertFileError) and str(e.path) == "/tmp/x"

"""The one thing pyproject.toml cannot say: the C extensions.

`optional`: a service that installs only the shim needs no compiler; the
collector refuses to start, with the reason, when the machine was not built,
and reads OTLP spans with the official types alone without `_spans`.

The reconcile machine is plain C (reconcile/machine/) under a thin CPython
binding (reconcile/_machine.c). MSGTALLY_CFLAGS adds compiler flags to both
extensions (.ci/sanitize builds them with the sanitizers).
"""

import os
import shlex

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
EXTRA = shlex.split(os.environ.get("MSGTALLY_CFLAGS", ""))
MACHINE = ["logbody.c", "machine.c", "sequences.c", "checkpoint.c"]

setup(
    ext_modules=[
        Extension(
            "msgtally.reconcile._machine",
            ["reconcile/_machine.c", *(f"reconcile/machine/{name}" for name in MACHINE)],
            depends=["reconcile/machine/machine.h", "reconcile/machine/internal.h",
                     "reconcile/machine/limits.h", "reconcile/machine/logbody.h"],
            extra_compile_args=FLAGS + EXTRA,
            extra_link_args=EXTRA,
            optional=True,
        ),
        Extension(
            "msgtally.ingest.intake.otlp._spans",
            ["ingest/intake/otlp/_spans.c"],
            extra_compile_args=["-O2", "-std=c11", *EXTRA],
            extra_link_args=EXTRA,
            optional=True,
        ),
    ]
)

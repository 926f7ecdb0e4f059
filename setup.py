"""The one thing pyproject.toml cannot say: the C extensions.

`optional`: a service that installs only the shim needs no compiler; the
collector refuses to start, with the reason, when the engine was not built,
and reads OTLP spans with the official types alone without `_spans`.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "msgtally.reconcile._engine",
            ["reconcile/_engine.c"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        ),
        Extension(
            "msgtally.ingest.intake.otlp._spans",
            ["ingest/intake/otlp/_spans.c"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        ),
    ]
)

"""The one thing pyproject.toml cannot say: the reconcile engine's C extension.

`optional`: a service that installs only the shim needs no compiler; the
collector refuses to start, with the reason, when the engine was not built.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "msgtally.reconcile._engine",
            ["reconcile/_engine.c"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        )
    ]
)

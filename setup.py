"""The compiled fast paths; everything else is in pyproject.toml.

Every extension is optional: where one cannot be built (no C compiler or Python headers) the
package installs without it and the Python reference code runs instead (docs/performance.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ipsec_offload.agent._datapath",
            ["src/ipsec_offload/agent/_datapath.c"],
            optional=True,
        ),
        Extension(
            "ipsec_offload.wire._checksum",
            ["src/ipsec_offload/wire/_checksum.c"],
            depends=["src/ipsec_offload/wire/checksum.h"],
            optional=True,
        ),
    ]
)

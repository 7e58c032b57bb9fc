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
            depends=["src/ipsec_offload/agent/esp_open.h"],
            optional=True,
        ),
        *(
            Extension(
                f"ipsec_offload.{name}",
                [f"src/ipsec_offload/{name.replace('.', '/')}.c"],
                include_dirs=["src/ipsec_offload/wire"],
                depends=[
                    "src/ipsec_offload/wire/checksum.h",
                    "src/ipsec_offload/agent/esp_open.h",
                ],
                optional=True,
            )
            for name in ("wire._checksum", "wire._frames", "nic._txpath", "host._rxpath")
        ),
    ]
)

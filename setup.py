"""The compiled fast paths; everything else is in pyproject.toml.

Every extension is optional: where one cannot be built (no C compiler or Python headers) the
package installs without it and the Python reference code runs instead (docs/performance.md).
Every extension includes the shared headers from the package's root, the same way
(`#include "wire/checksum.h"`), and is rebuilt when any of them changes.
"""

from setuptools import Extension, setup

PACKAGE = "src/ipsec_offload"
HEADERS = [
    f"{PACKAGE}/pyslots.h",  # the slots of Python objects (agent, NIC, host)
    f"{PACKAGE}/wire/byteorder.h",  # network byte order
    f"{PACKAGE}/wire/checksum.h",  # the Internet checksum
    f"{PACKAGE}/agent/esp_open.h",  # opening an inbound ESP frame (agent, host)
]

setup(
    ext_modules=[
        Extension(
            f"ipsec_offload.{name}",
            [f"{PACKAGE}/{name.replace('.', '/')}.c"],
            include_dirs=[PACKAGE],
            depends=HEADERS,
            optional=True,
        )
        for name in (
            "wire._checksum",
            "wire._frames",
            "agent._datapath",
            "nic._nicpath",
            "host._rxpath",
            "live._pktio",
        )
    ]
)

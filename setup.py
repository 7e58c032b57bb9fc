"""The agent's compiled fast path; everything else is in pyproject.toml.

The extension is optional: where it cannot be built (no C compiler or Python headers) the
package installs without it and the agent runs every frame through its Python reference path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ipsec_offload.agent._datapath",
            ["src/ipsec_offload/agent/_datapath.c"],
            optional=True,
        )
    ]
)

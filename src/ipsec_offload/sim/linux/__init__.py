"""A real Linux kernel as a peer on the wire: a stock Debian kernel under QEMU (`image`
builds its boot image, `guest` runs and drives it, `peer` makes it a host of the testbed).
docs/linux-peer.md tells how it works and what it costs."""

"""Byte codecs, `parse_x` / `build_x` in pairs, without state.

- `ethernet`: Ethernet header, metadata tag and VLAN tags
- `metadata`: the Tx and Rx 32-bit metadata words
- `ip`: IPv4, IPv6, extension headers, the Internet checksum
- `transport`: UDP, ICMP/ICMPv6 echo, TCP and their pseudo-header checksums
- `esp`: ESP header and trailer
- `packet`: the ESP packet inside a whole frame, for readers of captures
- `config`: config frames, TLVs and typed message bodies
- `addr`: text forms of MAC and IP addresses
"""

"""ipsec-offload: a reference model and emulator of an SR-IOV NIC with an inline IPsec ESP
offload agent, its PF/VF drivers and an xfrm-like host stack."""

__version__ = "0.1.0"

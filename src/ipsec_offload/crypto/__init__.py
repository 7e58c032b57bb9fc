"""crypto layer: AES-GCM for ESP (RFC 4106) and AES key wrap with padding (RFC 5649)."""

from ipsec_offload.crypto.gcm import EspAead, aad, key_material_length
from ipsec_offload.crypto.keywrap import unwrap_key, wrap_key

__all__ = ["EspAead", "aad", "key_material_length", "unwrap_key", "wrap_key"]

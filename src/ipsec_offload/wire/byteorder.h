/* Network byte order for the compiled fast paths: 16-, 32- and 64-bit big-endian fields read
 * from and written to unaligned bytes of a frame (rd16 .. wr64), as struct's "!H", "!I" and
 * "!Q" do for the Python reference paths. Used by wire/_frames.c, the NIC (nic/_nicpath.c),
 * the agent and the host stack (through agent/esp_open.h).
 */
#ifndef IPSEC_OFFLOAD_BYTEORDER_H
#define IPSEC_OFFLOAD_BYTEORDER_H

#include <stdint.h>

static inline unsigned rd16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }

static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) << 32 | rd32(p + 4); }

static inline void wr16(uint8_t *p, unsigned v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void wr32(uint8_t *p, uint32_t v) {
    wr16(p, v >> 16);
    wr16(p + 2, v & 0xFFFF);
}

static inline void wr64(uint8_t *p, uint64_t v) {
    wr32(p, (uint32_t)(v >> 32));
    wr32(p + 4, (uint32_t)v);
}

#endif

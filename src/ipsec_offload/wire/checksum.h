/* The Internet checksum (RFC 1071) for the compiled fast paths; `_checksum.c` gives it to
 * Python as `internet_checksum`.
 *
 * The ones' complement sum does not depend on byte order (RFC 1071 section 2(B)), so the data
 * is summed as native 32-bit words into 64 bits and the folded result swapped to network
 * order once at the end. A checksum over several pieces adds each with `csum_add`; every piece
 * but the last must have an even length, as the 16-bit words run on across pieces.
 */
#ifndef IPSEC_OFFLOAD_CHECKSUM_H
#define IPSEC_OFFLOAD_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* `sum` plus the bytes p[0..n) as native-order words (a final odd byte padded with zero). */
static inline uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t n) {
    uint32_t w;
    while (n >= 4) {
        memcpy(&w, p, 4);
        sum += w;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        sum += h;
        p += 2;
        n -= 2;
    }
    if (n) {
        uint8_t last[2] = {p[0], 0};
        uint16_t h;
        memcpy(&h, last, 2);
        sum += h;
    }
    return sum;
}

/* `sum` plus one 16-bit value given in host order (a length or a protocol number). */
static inline uint64_t csum_add16(uint64_t sum, unsigned value) {
    uint8_t be[2] = {(uint8_t)(value >> 8), (uint8_t)value};
    return csum_add(sum, be, 2);
}

/* The ones' complement sum folded to 16 bits, in host order (0xffff for a non-zero sum that
 * folds to all ones; 0 only for an all-zero sum). */
static inline unsigned csum_fold(uint64_t sum) {
    sum = (sum & 0xFFFFFFFFu) + (sum >> 32);
    sum = (sum & 0xFFFFFFFFu) + (sum >> 32);
    sum = (sum & 0xFFFFu) + (sum >> 16);
    sum = (sum & 0xFFFFu) + (sum >> 16);
    sum = (sum & 0xFFFFu) + (sum >> 16);
    uint16_t native = (uint16_t)sum;
    uint8_t be[2];
    memcpy(be, &native, 2);
    return (unsigned)be[0] << 8 | be[1];
}

/* The checksum to store: the complement of the folded sum, in host order. */
static inline unsigned csum_finish(uint64_t sum) { return ~csum_fold(sum) & 0xFFFFu; }

#endif

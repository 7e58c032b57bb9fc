/* peerd: the Linux guest's helper for the testbed's Linux peers (docs/linux-peer.md).
 *
 * Theory of operation: the guest's init starts peerd on the virtio-serial port that QEMU
 * connects to the testbed. peerd reads one command per line and writes one line per answer or
 * event; every field is a decimal number, a word, or bytes in hex:
 *
 *   X id hex-arg...            run a program (argv[0] a path), answer R id status hex-output
 *   O id netns                 open the sockets of a peer's network namespace (anew, if it
 *                              was opened before), answer R id 0 -
 *   S id netns dst proto hex   send an upper-layer segment (proto 6/17/1/58, checksummed by
 *                              the sender) to dst (4 or 16 bytes), through the namespace's
 *                              xfrm policies; answer R id 0 - (or R id errno hex-message)
 *
 * For each peer namespace it holds raw sockets for UDP, TCP and ICMP (v4 and v6), which get a
 * copy of every such packet the namespace's stack accepts (after ESP input and the inbound
 * policy check): peerd writes each as  D netns src dst proto hex-segment.
 *
 * Synchronisation: the testbed sends a marker frame (EtherType 0x9000, the loopback test
 * protocol, which no other part of the model sends; "ipsec-offload mark" and an 8-byte token) to
 * eth0 after the frames it wants processed. The stack handles eth0's frames in order, so when
 * the marker reaches peerd's packet socket the frames before it have been through the stack,
 * but for the delivery of what they decrypted, which the kernel queues (flush_deferred
 * waits it out with a probe through the same queue); then peerd drains its raw sockets
 * (their D lines), writes  M token, and sends the marker back out
 * of eth0, behind whatever the stack sent meanwhile, so that the testbed knows it has every
 * frame the guest sent so far. peerd runs as SCHED_IDLE: it runs when the stack has nothing
 * left to do.
 *
 * TCP segments peerd sends carry the socket mark 1, so that a policy blocking the kernel's
 * own TCP (its resets to segments of no connection, mark 0) lets them through.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define MARK_ETHERTYPE 0x9000
#define MARK_MAGIC "ipsec-offload mark"
#define MARK_MAGIC_LEN 18
#define MARK_TOKEN (14 + MARK_MAGIC_LEN)
#define PROBE_PORT 9
#define MAX_NS 16
#define MAX_LINE (1 << 20)
#define MAX_OUTPUT (1 << 20)
#define MAX_ARGS 64
#define NSOCK 6

static const int family_of[NSOCK] = {AF_INET, AF_INET, AF_INET, AF_INET6, AF_INET6, AF_INET6};
static const int proto_of[NSOCK] = {IPPROTO_UDP, IPPROTO_TCP, IPPROTO_ICMP,
                                    IPPROTO_UDP, IPPROTO_TCP, IPPROTO_ICMPV6};

struct netns {
    char name[64];
    int fd[NSOCK];
};

static struct netns spaces[MAX_NS];
static int nspaces;
static int ctl = -1;
static int mark_sock = -1;
static int eth_index;
static unsigned char eth_mac[6];
static char outbuf[4 * MAX_LINE];
static size_t outlen;

static void flush_out(void) {
    size_t done = 0;
    while (done < outlen) {
        ssize_t n = write(ctl, outbuf + done, outlen - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                struct pollfd p = {ctl, POLLOUT, 0};
                poll(&p, 1, 1000);
                continue;
            }
            _exit(3);
        }
        done += (size_t)n;
    }
    outlen = 0;
}

static void put(const char *text) {
    size_t n = strlen(text);
    if (outlen + n > sizeof outbuf) flush_out();
    memcpy(outbuf + outlen, text, n);
    outlen += n;
}

static void put_hex(const unsigned char *data, size_t len) {
    static const char digits[] = "0123456789abcdef";
    if (len == 0) {
        put("-");
        return;
    }
    for (size_t i = 0; i < len; i++) {
        if (outlen + 2 > sizeof outbuf) flush_out();
        outbuf[outlen++] = digits[data[i] >> 4];
        outbuf[outlen++] = digits[data[i] & 15];
    }
}

static void put_num(long value) {
    char text[32];
    snprintf(text, sizeof text, "%ld", value);
    put(text);
}

/* Hex to bytes in place; "-" is empty. Returns the length, or -1 on a bad digit. */
static long unhex(char *text) {
    if (strcmp(text, "-") == 0) return 0;
    size_t len = strlen(text);
    if (len % 2) return -1;
    for (size_t i = 0; i < len / 2; i++) {
        unsigned int byte;
        if (sscanf(text + 2 * i, "%2x", &byte) != 1) return -1;
        text[i] = (char)byte;
    }
    return (long)(len / 2);
}

static void answer(const char *id, int status, const char *message) {
    put("R ");
    put(id);
    put(" ");
    put_num(status);
    put(" ");
    put_hex((const unsigned char *)message, strlen(message));
    put("\n");
}

static struct netns *find_ns(const char *name) {
    for (int i = 0; i < nspaces; i++)
        if (strcmp(spaces[i].name, name) == 0) return &spaces[i];
    return NULL;
}

static void run_program(const char *id, int argc, char **argv) {
    int pipefd[2];
    /* close-on-exec: the program gets the pipe as its stdout and stderr only, so that one it
     * leaves running in the background with those elsewhere does not hold the pipe open */
    if (argc < 1 || pipe2(pipefd, O_CLOEXEC) < 0) {
        answer(id, 127, "no program");
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        argv[argc] = NULL;
        execv(argv[0], argv);
        fprintf(stderr, "peerd: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(pipefd[1]);
    static unsigned char output[MAX_OUTPUT];
    size_t got = 0;
    for (;;) {
        ssize_t n = read(pipefd[0], output + got, got < MAX_OUTPUT ? MAX_OUTPUT - got : 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n == 0 || got >= MAX_OUTPUT) break;
            break;
        }
        got += (size_t)n;
        if (got >= MAX_OUTPUT) { /* keep reading to let the child finish, drop the rest */
            unsigned char sink[4096];
            while (read(pipefd[0], sink, sizeof sink) > 0) {
            }
            break;
        }
    }
    close(pipefd[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    put("R ");
    put(id);
    put(" ");
    put_num(code);
    put(" ");
    put_hex(output, got);
    put("\n");
}

/* Open the sockets of namespace `name`; a name opened before (a namespace since deleted
 * and made again) gets new sockets in place of its old ones. */
static int open_ns(const char *name) {
    struct netns *old = find_ns(name);
    if (old != NULL) {
        for (int i = 0; i < NSOCK; i++) close(old->fd[i]);
        *old = spaces[--nspaces];
    }
    if (nspaces == MAX_NS || strlen(name) >= sizeof spaces[0].name) return ENOSPC;
    char path[128];
    snprintf(path, sizeof path, "/run/netns/%s", name);
    int here = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    int there = open(path, O_RDONLY | O_CLOEXEC);
    if (here < 0 || there < 0 || setns(there, CLONE_NEWNET) < 0) {
        int err = errno;
        if (here >= 0) close(here);
        if (there >= 0) close(there);
        return err;
    }
    struct netns *ns = &spaces[nspaces];
    int err = 0;
    for (int i = 0; i < NSOCK; i++) {
        ns->fd[i] = socket(family_of[i], SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, proto_of[i]);
        if (ns->fd[i] < 0) {
            err = errno;
            continue;
        }
        int size = 4 << 20, on = 1, mark = 1;
        setsockopt(ns->fd[i], SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
        if (family_of[i] == AF_INET6)
            setsockopt(ns->fd[i], IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on);
        if (proto_of[i] == IPPROTO_TCP)
            setsockopt(ns->fd[i], SOL_SOCKET, SO_MARK, &mark, sizeof mark);
    }
    if (setns(here, CLONE_NEWNET) < 0) err = errno;
    close(here);
    close(there);
    if (err) {
        for (int i = 0; i < NSOCK; i++)
            if (ns->fd[i] >= 0) close(ns->fd[i]);
        return err;
    }
    strcpy(ns->name, name);
    nspaces++;
    return 0;
}

static void send_segment(const char *id, char **field) {
    struct netns *ns = find_ns(field[0]);
    long dlen = unhex(field[1]);
    int proto = atoi(field[2]);
    long len = unhex(field[3]);
    if (ns == NULL || (dlen != 4 && dlen != 16) || len < 0) {
        answer(id, EINVAL, "bad send: unknown namespace, address or segment");
        return;
    }
    int slot = -1;
    for (int i = 0; i < NSOCK; i++)
        if (proto_of[i] == proto && family_of[i] == (dlen == 4 ? AF_INET : AF_INET6)) slot = i;
    if (slot < 0) {
        answer(id, EPROTONOSUPPORT, "no socket for that protocol");
        return;
    }
    struct sockaddr_storage to;
    memset(&to, 0, sizeof to);
    socklen_t tolen;
    if (dlen == 4) {
        struct sockaddr_in *a = (struct sockaddr_in *)&to;
        a->sin_family = AF_INET;
        memcpy(&a->sin_addr, field[1], 4);
        tolen = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&to;
        a->sin6_family = AF_INET6;
        memcpy(&a->sin6_addr, field[1], 16);
        tolen = sizeof *a;
    }
    if (sendto(ns->fd[slot], field[3], (size_t)len, 0, (struct sockaddr *)&to, tolen) < 0) {
        int err = errno;
        answer(id, err, strerror(err));
        return;
    }
    answer(id, 0, "");
}

static void report(struct netns *ns, int slot) {
    static unsigned char buf[65536];
    for (;;) {
        struct sockaddr_in6 from;
        char control[256];
        struct iovec iov = {buf, sizeof buf};
        struct msghdr msg = {&from, sizeof from, &iov, 1, control, sizeof control, 0};
        ssize_t n = recvmsg(ns->fd[slot], &msg, 0);
        if (n < 0) return;
        const unsigned char *src, *dst, *segment;
        size_t alen, len;
        if (family_of[slot] == AF_INET) {
            size_t ihl = (size_t)(buf[0] & 15) * 4;
            if (n < 20 || (size_t)n < ihl) continue;
            src = buf + 12;
            dst = buf + 16;
            alen = 4;
            segment = buf + ihl;
            len = (size_t)n - ihl;
        } else {
            static struct in6_addr none;
            const struct in6_addr *to = &none;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
                if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO)
                    to = &((struct in6_pktinfo *)CMSG_DATA(c))->ipi6_addr;
            src = (const unsigned char *)&from.sin6_addr;
            dst = (const unsigned char *)to;
            alen = 16;
            segment = buf;
            len = (size_t)n;
        }
        put("D ");
        put(ns->name);
        put(" ");
        put_hex(src, alen);
        put(" ");
        put_hex(dst, alen);
        put(" ");
        put_num(proto_of[slot]);
        put(" ");
        put_hex(segment, len);
        put("\n");
    }
}

static void report_all(void) {
    for (int i = 0; i < nspaces; i++)
        for (int s = 0; s < NSOCK; s++) report(&spaces[i], s);
}

/* A decrypted packet is not delivered where it was opened: the kernel queues it for the
 * xfrm tasklet (xfrm_trans_queue; a tunnel's inner packet to the gro_cells NAPI), which may
 * run after peerd has seen the marker. The probe flushes that queue: a datagram from peerd to
 * itself on loopback, which init protects with an ESP SA of its own, goes through the same
 * queue, behind what is in it; when it arrives, everything queued before it is delivered. */
static int probe_rx = -1, probe_tx = -1;
static unsigned int probe_seq;

static void open_probe(void) {
    struct sockaddr_in here = {.sin_family = AF_INET, .sin_port = htons(PROBE_PORT)};
    here.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    probe_rx = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    probe_tx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (probe_rx < 0 || probe_tx < 0 || bind(probe_rx, (struct sockaddr *)&here, sizeof here) < 0 ||
        connect(probe_tx, (struct sockaddr *)&here, sizeof here) < 0) {
        perror("peerd: probe");
        _exit(1);
    }
}

static void flush_deferred(void) {
    probe_seq++;
    if (send(probe_tx, &probe_seq, sizeof probe_seq, 0) < 0) return;
    for (;;) {
        struct pollfd p = {probe_rx, POLLIN, 0};
        if (poll(&p, 1, 2000) <= 0) return; /* bounded: the marker goes back regardless */
        unsigned int got;
        while (recv(probe_rx, &got, sizeof got, 0) == (ssize_t)sizeof got)
            if (got == probe_seq) return;
    }
}

static void marker(void) {
    unsigned char frame[2048];
    for (;;) {
        ssize_t n = recv(mark_sock, frame, sizeof frame, MSG_DONTWAIT);
        if (n < 0) return;
        if (n < MARK_TOKEN + 8 || memcmp(frame + 14, MARK_MAGIC, MARK_MAGIC_LEN) != 0) continue;
        flush_deferred();
        report_all();
        put("M ");
        put_hex(frame + MARK_TOKEN, 8);
        put("\n");
        flush_out();
        unsigned char back[60];
        memset(back, 0, sizeof back);
        memcpy(back, frame + 6, 6);
        memcpy(back + 6, eth_mac, 6);
        back[12] = MARK_ETHERTYPE >> 8;
        back[13] = MARK_ETHERTYPE & 0xff;
        memcpy(back + 14, frame + 14, MARK_MAGIC_LEN + 8);
        struct sockaddr_ll to = {0};
        to.sll_family = AF_PACKET;
        to.sll_ifindex = eth_index;
        to.sll_halen = 6;
        memcpy(to.sll_addr, frame + 6, 6);
        sendto(mark_sock, back, sizeof back, 0, (struct sockaddr *)&to, sizeof to);
    }
}

static void command(char *line) {
    char *field[MAX_ARGS + 3];
    int count = 0;
    for (char *tok = strtok(line, " "); tok && count < MAX_ARGS + 2; tok = strtok(NULL, " "))
        field[count++] = tok;
    if (count < 2) return;
    const char *id = field[1];
    if (strcmp(field[0], "X") == 0) {
        char *argv[MAX_ARGS + 1];
        int argc = 0;
        for (int i = 2; i < count; i++) {
            long len = unhex(field[i]);
            if (len < 0) {
                answer(id, EINVAL, "bad hex argument");
                return;
            }
            field[i][len] = '\0';
            argv[argc++] = field[i];
        }
        run_program(id, argc, argv);
    } else if (strcmp(field[0], "O") == 0 && count == 3) {
        int err = open_ns(field[2]);
        answer(id, err, err ? strerror(err) : "");
    } else if (strcmp(field[0], "S") == 0 && count == 6) {
        send_segment(id, field + 2);
    } else {
        answer(id, EINVAL, "unknown command");
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: peerd CONTROL-DEVICE INTERFACE\n");
        return 2;
    }
    ctl = open(argv[1], O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (ctl < 0) {
        perror(argv[1]);
        return 1;
    }
    struct termios tio;
    if (tcgetattr(ctl, &tio) == 0) {
        cfmakeraw(&tio);
        tcsetattr(ctl, TCSANOW, &tio);
    }
    struct sched_param param = {0};
    sched_setscheduler(0, SCHED_IDLE, &param);
    mark_sock = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(MARK_ETHERTYPE));
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", argv[2]);
    if (mark_sock < 0 || ioctl(mark_sock, SIOCGIFINDEX, &ifr) < 0) {
        perror(argv[2]);
        return 1;
    }
    eth_index = ifr.ifr_ifindex;
    if (ioctl(mark_sock, SIOCGIFHWADDR, &ifr) == 0) memcpy(eth_mac, ifr.ifr_hwaddr.sa_data, 6);
    struct sockaddr_ll here = {0};
    here.sll_family = AF_PACKET;
    here.sll_protocol = htons(MARK_ETHERTYPE);
    here.sll_ifindex = eth_index;
    if (bind(mark_sock, (struct sockaddr *)&here, sizeof here) < 0) {
        perror("bind");
        return 1;
    }
    open_probe();
    static char line[MAX_LINE];
    size_t have = 0;
    put("READY\n");
    flush_out();
    for (;;) {
        struct pollfd fds[2 + MAX_NS * NSOCK];
        int n = 0;
        fds[n++] = (struct pollfd){ctl, POLLIN, 0};
        fds[n++] = (struct pollfd){mark_sock, POLLIN, 0};
        for (int i = 0; i < nspaces; i++)
            for (int s = 0; s < NSOCK; s++) fds[n++] = (struct pollfd){spaces[i].fd[s], POLLIN, 0};
        if (poll(fds, (nfds_t)n, -1) < 0 && errno != EINTR) return 1;
        report_all();
        marker();
        if (fds[0].revents & (POLLIN | POLLHUP)) {
            ssize_t got = read(ctl, line + have, sizeof line - 1 - have);
            if (got < 0 && errno != EINTR && errno != EAGAIN) return 1;
            if (got > 0) have += (size_t)got;
            char *start = line, *end;
            line[have] = '\0';
            while ((end = memchr(start, '\n', have - (size_t)(start - line))) != NULL) {
                *end = '\0';
                if (end > start && end[-1] == '\r') end[-1] = '\0';
                command(start);
                start = end + 1;
            }
            have -= (size_t)(start - line);
            memmove(line, start, have);
            if (have == sizeof line - 1) have = 0; /* a line too long: dropped */
        }
        flush_out();
    }
}

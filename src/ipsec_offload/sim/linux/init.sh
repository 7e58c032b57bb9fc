#!/bin/busybox sh
# The Linux guest's init (sim/linux/image.py puts it in the initramfs as /init): mount the
# kernel's file systems, load the modules in their order, make the network quiet and start
# peerd on the virtio-serial port named "ctl".
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /run /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mkdir -p /run/netns
for module in $(cat /etc/modules-order); do
    insmod "/lib/modules/$module" || echo "init: insmod $module failed"
done
# every namespace made later starts from these: no IPv6 link-local address, no duplicate
# address detection, no router solicitation (nothing on the wire the testbed did not ask for)
sysctl -qw net.core.devconf_inherit_init_net=1
for conf in all default; do
    sysctl -qw net.ipv6.conf.$conf.addr_gen_mode=1
    sysctl -qw net.ipv6.conf.$conf.accept_dad=0
    sysctl -qw net.ipv6.conf.$conf.dad_transmits=0
    sysctl -qw net.ipv6.conf.$conf.router_solicitations=0
    sysctl -qw net.ipv6.conf.$conf.accept_ra=0
done
# one FIFO on eth0: what the stack sends leaves in order, peerd's marker last (fq_codel,
# the kernel's default, would interleave flows)
sysctl -qw net.core.default_qdisc=pfifo
ip link set lo up
# peerd's probe (peerd.c, flush_deferred): its datagrams to itself on loopback port 9 go
# through ESP, so that their delivery queues behind every decrypted packet's (loopback skips
# xfrm unless told not to)
sysctl -qw net.ipv4.conf.lo.disable_xfrm=0
sysctl -qw net.ipv4.conf.lo.disable_policy=0
/sbin/ip xfrm state add src 127.0.0.1 dst 127.0.0.1 proto esp spi 0x9 mode transport \
    aead 'rfc4106(gcm(aes))' 0x0909090909090909090909090909090909090909 128
/sbin/ip xfrm policy add src 127.0.0.1/32 dst 127.0.0.1/32 proto 17 dport 9 dir out \
    tmpl proto esp mode transport
sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1
ip link set eth0 promisc on up
port=""
for name in /sys/class/virtio-ports/*/name; do
    [ "$(cat "$name")" = ctl ] && port="/dev/$(basename "$(dirname "$name")")"
done
[ -n "$port" ] || { echo "init: no virtio port named ctl"; poweroff -f; }
echo "init: peerd on $port"
/sbin/peerd "$port" eth0
echo "init: peerd ended ($?)"
poweroff -f

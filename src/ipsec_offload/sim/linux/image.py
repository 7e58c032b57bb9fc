"""The Linux guest's boot image: a stock Debian cloud kernel and a small initramfs, built from
Debian's packages and cached.

The kernel package is fetched with `apt-get download` and unpacked with `dpkg-deb -x` (it is
not installed). The initramfs holds busybox (the static build), iproute2's `ip` with the
libraries it links, the kernel modules the peer needs with those they depend on (`busybox
depmod` writes the package's missing modules.dep), the init script and peerd, compiled static
here. The cache folder keeps `vmlinuz`, `initramfs.cpio.gz` and `manifest.json`; a build
whose inputs (kernel package and version, init, peerd, module list, busybox and ip) are those
of the manifest is reused, any change rebuilds.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ipsec_offload.errors import LinuxGuestError

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
"""Debian's package that names the current cloud kernel."""
GUEST_DIR_ENV = "IPSEC_OFFLOAD_GUEST_DIR"
"""Where the image is built and kept (default: the user's cache, ipsec-offload/linux-guest)."""
MODULES = (
    "virtio_pci",
    "virtio_net",
    "virtio_console",
    "8021q",
    "macvlan",
    "xfrm_user",
    "esp4",
    "esp6",
    "gcm",
    "ghash_generic",
    "ctr",
    "seqiv",
    "echainiv",
    "crypto_null",
    "sha512_generic",
    "drbg",
)
"""The modules the peer loads, in this order, each after those it depends on (those built
into the kernel need nothing: crypto_null and hmac are, in Debian's cloud kernel; drbg's
self-test needs hmac(sha512)). No AES-NI and
no ESP GSO offload: the generic AES-GCM is synchronous, so a frame is through the stack
before the next (peerd's marker relies on it)."""
APT_PACKAGES = ("qemu-system-x86", "busybox-static")
"""What `apt-get install --no-install-recommends` needs to add for the guest (iproute2 and gcc
are on any Debian machine that builds the package)."""
_INSTALL = "apt-get install --no-install-recommends " + " ".join(APT_PACKAGES)
_CPIO_HEADER = "070701" + "{:08X}" * 13
_PEERD_CFLAGS = ("gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror")
"""peerd's compile: static (the initramfs has no libraries for it), and no warning let by."""
_PT_INTERP = 3


@dataclass(frozen=True, slots=True)
class GuestImage:
    """A built image: the kernel, the initramfs and what they were built from."""

    kernel: Path
    initramfs: Path
    kernel_package: str
    kernel_version: str
    """The package's version (Debian's), e.g. 6.1.192-3."""
    release: str
    """The kernel's release (uname -r), e.g. 6.1.0-57-cloud-amd64."""


def guest_dir() -> Path:
    """The folder the image is kept in (`IPSEC_OFFLOAD_GUEST_DIR`, else the user's cache)."""
    explicit = os.environ.get(GUEST_DIR_ENV)
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(cache) / "ipsec-offload" / "linux-guest"


def missing_tools() -> list[str]:
    """What this machine lacks to build and boot the guest, each with how to get it (empty:
    nothing)."""
    missing = []
    if shutil.which("qemu-system-x86_64") is None:
        missing.append(f"qemu-system-x86_64 (install it: {_INSTALL})")
    busybox = shutil.which("busybox")
    if busybox is None or _is_dynamic(Path(busybox)):
        missing.append(f"a static busybox (install busybox-static: {_INSTALL})")
    for tool, package in (("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("gcc", "gcc")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (from Debian's {package} package)")
    if _iproute2_ip() is None:
        missing.append("iproute2's ip (apt-get install iproute2)")
    return missing


def cached_image(directory: Path | None = None) -> GuestImage | None:
    """The image in the cache, if one was built (whatever the kernel package is now)."""
    folder = directory or guest_dir()
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    image = _image_of(folder, manifest)
    return image if image.kernel.is_file() and image.initramfs.is_file() else None


def build_image(
    directory: Path | None = None,
    *,
    kernel_package: str | None = None,
    force: bool = False,
) -> GuestImage:
    """Build the guest image into `directory` (default `guest_dir()`), or reuse the one there
    when it was built from the same inputs. `kernel_package` names a linux-image package
    (default: the one Debian's linux-image-cloud-amd64 depends on now)."""
    missing = missing_tools()
    if missing:
        raise LinuxGuestError("cannot build the Linux guest, missing: " + "; ".join(missing))
    folder = directory or guest_dir()
    package = kernel_package or _current_kernel_package()
    version = _candidate_version(package)
    ip = _iproute2_ip()
    assert ip is not None
    busybox = Path(shutil.which("busybox") or "")
    inputs = {
        "kernel_package": package,
        "kernel_version": version,
        "init": _digest(_resource("init.sh")),
        "peerd": _digest(_resource("peerd.c")),
        "modules": list(MODULES),
        "busybox": _digest(busybox.read_bytes()),
        "ip": _digest(ip.read_bytes()),
    }
    if not force:
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("inputs") == inputs:
            image = _image_of(folder, manifest)
            if image.kernel.is_file() and image.initramfs.is_file():
                return image
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ipsec-offload-guest-") as scratch:
        work = Path(scratch)
        deb = _download(package, work)
        root = work / "kernel"
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpack {deb.name}")
        release = _release(root)
        _run(["busybox", "depmod", "-b", str(root), release], "busybox depmod")
        peerd = work / "peerd"
        _run(
            [*_PEERD_CFLAGS, "-o", str(peerd), str(_resource_path(work, "peerd.c"))],
            "compile peerd (gcc -static: Debian's libc6-dev has the static C library)",
        )
        entries = _initramfs_entries(root, release, busybox, ip, peerd)
        initramfs = work / "initramfs.cpio.gz"
        with gzip.open(initramfs, "wb", compresslevel=6) as out:
            for name, mode, data in entries:
                out.write(_cpio_entry(name, mode, data))
            out.write(_cpio_entry("TRAILER!!!", 0, b""))
        kernel = root / "boot" / f"vmlinuz-{release}"
        for source, target in ((kernel, "vmlinuz"), (initramfs, "initramfs.cpio.gz")):
            temporary = folder / f".{target}.tmp"
            shutil.copyfile(source, temporary)
            os.replace(temporary, folder / target)
        manifest = {"inputs": inputs, "release": release}
        temporary = folder / ".manifest.json.tmp"
        temporary.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, folder / "manifest.json")
    return _image_of(folder, manifest)


def _image_of(folder: Path, manifest: dict[str, object]) -> GuestImage:
    inputs = manifest.get("inputs")
    inputs = inputs if isinstance(inputs, dict) else {}
    return GuestImage(
        folder / "vmlinuz",
        folder / "initramfs.cpio.gz",
        str(inputs.get("kernel_package", "")),
        str(inputs.get("kernel_version", "")),
        str(manifest.get("release", "")),
    )


def _current_kernel_package() -> str:
    argv = ["apt-cache", "depends", KERNEL_METAPACKAGE]
    out = _run(argv, " ".join(argv))
    for line in out.splitlines():
        word = line.strip()
        if word.startswith("Depends: linux-image-"):
            return word.split(":", 1)[1].strip()
    raise LinuxGuestError(
        f"apt-cache does not know {KERNEL_METAPACKAGE}: run apt-get update (Debian's package"
        " lists are needed to fetch the guest's kernel)"
    )


def _candidate_version(package: str) -> str:
    out = _run(["apt-cache", "policy", package], f"apt-cache policy {package}")
    for line in out.splitlines():
        word = line.strip()
        if word.startswith("Candidate:") and "(none)" not in word:
            return word.split(":", 1)[1].strip()
    raise LinuxGuestError(f"no version of {package} to download: run apt-get update")


def _download(package: str, where: Path) -> Path:
    _run(["apt-get", "download", "-q", package], f"apt-get download {package}", cwd=where)
    debs = sorted(where.glob(f"{package}_*.deb"))
    if not debs:
        raise LinuxGuestError(f"apt-get download {package} left no .deb file")
    return debs[0]


def _release(root: Path) -> str:
    releases = sorted(p.name for p in (root / "lib" / "modules").iterdir() if p.is_dir())
    if len(releases) != 1:
        raise LinuxGuestError(f"the kernel package holds {len(releases)} module trees, not one")
    return releases[0]


def _module_order(root: Path, release: str) -> list[str]:
    """The module files to load (paths under /lib/modules), each after its dependencies."""
    base = root / "lib" / "modules" / release
    deps: dict[str, list[str]] = {}
    for line in (base / "modules.dep").read_text(encoding="utf-8").splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
    by_name = {_module_name(path): path for path in deps}
    builtin = (base / "modules.builtin").read_text(encoding="utf-8").split()
    built_in = {_module_name(path) for path in builtin}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for need in deps.get(path, []):
            visit(need)
        order.append(path)

    for name in MODULES:
        if name in built_in:
            continue
        path = by_name.get(name)
        if path is None:
            raise LinuxGuestError(f"the kernel package has no module {name}")
        visit(path)
    return order


def _module_name(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("-", "_")


def _initramfs_entries(
    root: Path, release: str, busybox: Path, ip: Path, peerd: Path
) -> Iterator[tuple[str, int, bytes | None]]:
    """(path, mode, contents) of every entry, folders first (contents None: a folder)."""
    files: dict[str, tuple[int, bytes]] = {
        "init": (0o755, _resource("init.sh")),
        "bin/busybox": (0o755, busybox.read_bytes()),
        "sbin/ip": (0o755, ip.read_bytes()),
        "sbin/peerd": (0o755, peerd.read_bytes()),
    }
    for library in _libraries(ip):
        files[str(library).lstrip("/")] = (0o755, library.read_bytes())
    order = _module_order(root, release)
    modules = root / "lib" / "modules" / release
    for module in order:
        files[f"lib/modules/{module}"] = (0o644, (modules / module).read_bytes())
    files["etc/modules-order"] = (0o644, "".join(f"{m}\n" for m in order).encode())
    folders = {"proc", "sys", "dev", "run", "tmp", "etc"}
    for name in files:
        parts = name.split("/")[:-1]
        folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    for folder in sorted(folders):
        yield folder, stat.S_IFDIR | 0o755, None
    for name in sorted(files):
        mode, data = files[name]
        yield name, stat.S_IFREG | mode, data


def _libraries(binary: Path) -> list[Path]:
    """The shared libraries `binary` loads (ldd's list, the loader included), by real path
    under the name the loader looks for."""
    out = _run(["ldd", str(binary)], f"ldd {binary}")
    found = []
    for line in out.splitlines():
        words = line.split()
        path = next((w for w in words if w.startswith("/")), None)
        if path is not None:
            found.append(Path(path))
    return found


def _cpio_entry(name: str, mode: int, data: bytes | None) -> bytes:
    """One entry of a newc cpio archive (the kernel's initramfs format)."""
    body = data or b""
    encoded = name.encode() + b"\0"
    header = _CPIO_HEADER.format(0, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(encoded), 0)
    head = header.encode() + encoded
    head += b"\0" * (-len(head) % 4)
    return head + body + b"\0" * (-len(body) % 4)


def _is_dynamic(binary: Path) -> bool:
    """Whether an ELF file asks for a program interpreter (is dynamically linked)."""
    try:
        with binary.open("rb") as file:
            header = file.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2:
                return True
            (phoff,) = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            file.seek(phoff)
            table = file.read(phentsize * phnum)
    except OSError:
        return True
    return any(
        struct.unpack_from("<I", table, i * phentsize)[0] == _PT_INTERP for i in range(phnum)
    )


def _iproute2_ip() -> Path | None:
    """iproute2's ip (busybox's applet of that name has no xfrm)."""
    for candidate in ("/usr/sbin/ip", "/sbin/ip", "/bin/ip", "/usr/bin/ip"):
        path = Path(candidate)
        if path.is_file() and not path.is_symlink():
            try:
                out = subprocess.run(
                    [candidate, "-V"], capture_output=True, text=True, timeout=10, check=False
                )
            except OSError:
                continue
            if "iproute2" in out.stdout + out.stderr:
                return path
    return None


def _resource(name: str) -> bytes:
    return resources.files("ipsec_offload.sim.linux").joinpath(name).read_bytes()


def _resource_path(work: Path, name: str) -> Path:
    path = work / name
    path.write_bytes(_resource(name))
    return path


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, cwd=cwd, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LinuxGuestError(f"{what}: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise LinuxGuestError(f"{what} failed ({done.returncode}): {' / '.join(tail)}")
    return done.stdout

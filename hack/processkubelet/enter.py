"""Enter a container's filesystem view and exec its program: `python enter.py PLAN.json`.

Run as root by the supervisor, in place of the container's process (same pid: it ends in execve). It joins the
pod's network namespace, then in a new, private mount namespace builds the root the container sees and chroots
into it:
- the root is an overlay whose lower layer is the host's / and whose upper layer is the container's own
  directory, so the container can create its mount points (/models, /mnt/store) and write where it likes without
  touching the host; readOnlyRootFilesystem remounts it read-only;
- /proc and /sys are the host's; /dev is a fresh tmpfs with the usual device nodes bound in, /dev/pts, and
  /dev/shm (the pod's shm or memory volume);
- every volume is bind-mounted at its mountPath (read-only where the pod says so), and the container's
  termination-message file at its terminationMessagePath, so the kubelet reads it from the host side.
Nothing here is visible to the host or to other pods: the namespace goes away with the process.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                       data.encode() if data else None), f"mount {source} on {target}")


def bind(source: str, target: str, read_only: bool = False, recursive: bool = False) -> None:
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if read_only:
        mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def in_root(root: str, path: str, depth: int = 0) -> str:
    """`path` as the container sees it, resolved on the host under `root`: symlinks (absolute ones too, such as
    /var/run -> /run) are followed inside the root, never out of it (what runc's securejoin does)."""
    current = root
    parts = [p for p in path.split("/") if p and p != "."]
    for i, part in enumerate(parts):
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate) and depth < 40:
            target = os.readlink(candidate)
            base = target if target.startswith("/") else os.path.relpath(current, root) + "/" + target
            return in_root(root, base + "/" + "/".join(parts[i + 1:]), depth + 1)
        current = candidate
    return current


def _make_target(path: str, is_file: bool) -> None:
    if is_file:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            open(path, "a").close()
    else:
        os.makedirs(path, exist_ok=True)


def build_root(plan: dict[str, object]) -> str:
    rootfs = str(plan["rootfs"])
    root, upper, work = (os.path.join(rootfs, d) for d in ("root", "upper", "work"))
    for d in (root, upper, work):
        os.makedirs(d, exist_ok=True)
    mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={work}")
    bind("/proc", root + "/proc", recursive=True)
    bind("/sys", root + "/sys", recursive=True)
    dev = root + "/dev"
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755")
    for name in DEVICES:
        _make_target(f"{dev}/{name}", True)
        bind(f"/dev/{name}", f"{dev}/{name}")
    os.makedirs(f"{dev}/pts")
    bind("/dev/pts", f"{dev}/pts", recursive=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(f"{dev}/shm")
    mounts = list(plan["mounts"])  # type: ignore[call-overload]
    if not any(m["target"] == "/dev/shm" for m in mounts):
        mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m")
    for m in mounts:
        target = in_root(root, m["target"])
        _make_target(target, os.path.isfile(m["source"]))
        bind(m["source"], target, read_only=bool(m["read_only"]))
    term = in_root(root, str(plan["termination_path"]))
    _make_target(term, True)
    bind(str(plan["termination_file"]), term)
    if plan["read_only_root"]:
        mount("none", root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    return root


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        plan = json.load(fh)
    if plan.get("netns"):  # the pod's network namespace, made by the kubelet (network.py)
        fd = os.open(f"/run/netns/{plan['netns']}", os.O_RDONLY)
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns({plan['netns']})")
        os.close(fd)
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here propagates back to the host
    root = build_root(plan)
    os.chroot(root)
    os.chdir(plan["cwd"])
    argv = [str(a) for a in plan["argv"]]
    os.execve(argv[0], argv, {str(k): str(v) for k, v in plan["env"].items()})


if __name__ == "__main__":
    try:
        main()
    except OSError as exc:  # before exec: the container could not be created; say why in its log
        print(f"process kubelet: cannot start the container: {exc}", file=sys.stderr)
        sys.exit(128)

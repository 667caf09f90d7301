"""A FUSE filesystem that loses, at a "power cut", every write not yet synced.

Run as `python powercut_fs.py MOUNTPOINT CONTROL_DIR`. Everything lives in
memory. Each file keeps two contents: what readers see, and what was there at
its last fsync/fdatasync; each directory keeps two name tables: the current
one, and the one at its last fsync. That is the strictest reading of POSIX:
data is durable only once its file was synced, a name only once its
directory was.

Writing CONTROL_DIR/cut (any content) is the power cut: the durable state,
starting from the root's synced names, is written out to CONTROL_DIR/image as
an ordinary directory tree, then CONTROL_DIR/done is created. From then on
the filesystem refuses every change, as a machine without power would.
"""
import errno
import os
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations


class Node:
    def __init__(self, mode):
        self.mode = mode
        self.data = bytearray()
        self.synced_data = b""
        self.entries = {}
        self.synced_entries = {}
        now = time.time()
        self.times = (now, now)

    def is_dir(self):
        return stat.S_ISDIR(self.mode)


class PowerCutFs(Operations):
    def __init__(self, control):
        self.control = control
        self.root = Node(stat.S_IFDIR | 0o755)
        self.handles = {}
        self.next_fh = 1
        self.mutex = threading.Lock()
        self.dead = False

    # -- helpers ---------------------------------------------------------
    def lookup(self, path):
        node = self.root
        for part in [p for p in path.split("/") if p]:
            if not node.is_dir() or part not in node.entries:
                raise FuseOSError(errno.ENOENT)
            node = node.entries[part]
        return node

    def parent(self, path):
        head, name = os.path.split(path.rstrip("/"))
        directory = self.lookup(head or "/")
        if not directory.is_dir():
            raise FuseOSError(errno.ENOTDIR)
        return directory, name

    def alive(self):
        if self.dead:
            raise FuseOSError(errno.EIO)

    def handle(self, node):
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node
        return fh

    def node_of(self, path, fh):
        return self.handles.get(fh) or self.lookup(path)

    # -- the power cut ---------------------------------------------------
    def cut(self):
        image = os.path.join(self.control, "image")
        os.makedirs(image, exist_ok=True)

        def write_out(node, into):
            for name, child in node.synced_entries.items():
                target = os.path.join(into, name)
                if child.is_dir():
                    os.makedirs(target, exist_ok=True)
                    write_out(child, target)
                elif stat.S_ISREG(child.mode):
                    with open(target, "wb") as f:
                        f.write(child.synced_data)
                    os.chmod(target, stat.S_IMODE(child.mode))

        write_out(self.root, image)
        self.dead = True
        open(os.path.join(self.control, "done"), "w").close()

    def poll_control(self):
        while not self.dead:
            if os.path.exists(os.path.join(self.control, "cut")):
                with self.mutex:
                    self.cut()
                return
            time.sleep(0.01)

    # -- operations ------------------------------------------------------
    def __call__(self, op, *args):
        with self.mutex:
            return super().__call__(op, *args)

    def getattr(self, path, fh=None):
        node = self.node_of(path, fh)
        st = {
            "st_mode": node.mode,
            "st_nlink": 2 if node.is_dir() else 1,
            "st_size": len(node.data),
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
            "st_atime": node.times[0],
            "st_mtime": node.times[1],
            "st_ctime": node.times[1],
        }
        return st

    def readdir(self, path, fh):
        return [".", ".."] + list(self.lookup(path).entries)

    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 22, "f_bfree": 1 << 22,
                "f_bavail": 1 << 22, "f_files": 1 << 20, "f_ffree": 1 << 20, "f_favail": 1 << 20,
                "f_namemax": 255}

    def mkdir(self, path, mode):
        self.alive()
        directory, name = self.parent(path)
        if name in directory.entries:
            raise FuseOSError(errno.EEXIST)
        directory.entries[name] = Node(stat.S_IFDIR | mode)

    def rmdir(self, path):
        self.alive()
        directory, name = self.parent(path)
        node = self.lookup(path)
        if node.entries:
            raise FuseOSError(errno.ENOTEMPTY)
        del directory.entries[name]

    def create(self, path, mode, fi=None):
        self.alive()
        directory, name = self.parent(path)
        node = directory.entries.get(name)
        if node is None:
            node = Node(stat.S_IFREG | (mode & 0o7777))
            directory.entries[name] = node
        return self.handle(node)

    def mknod(self, path, mode, dev):
        self.alive()
        directory, name = self.parent(path)
        directory.entries[name] = Node(mode)

    def open(self, path, flags):
        node = self.lookup(path)
        if flags & (os.O_WRONLY | os.O_RDWR):
            self.alive()
        if flags & os.O_TRUNC:
            node.data = bytearray()
        return self.handle(node)

    def opendir(self, path):
        return self.handle(self.lookup(path))

    def release(self, path, fh):
        self.handles.pop(fh, None)

    def releasedir(self, path, fh):
        self.handles.pop(fh, None)

    def read(self, path, size, offset, fh):
        node = self.node_of(path, fh)
        return bytes(node.data[offset:offset + size])

    def write(self, path, data, offset, fh):
        self.alive()
        node = self.node_of(path, fh)
        if offset > len(node.data):
            node.data.extend(b"\0" * (offset - len(node.data)))
        node.data[offset:offset + len(data)] = data
        node.times = (node.times[0], time.time())
        return len(data)

    def truncate(self, path, length, fh=None):
        self.alive()
        node = self.node_of(path, fh)
        if length < len(node.data):
            del node.data[length:]
        else:
            node.data.extend(b"\0" * (length - len(node.data)))

    def fsync(self, path, datasync, fh):
        self.alive()
        node = self.node_of(path, fh)
        node.synced_data = bytes(node.data)
        return 0

    def fsyncdir(self, path, datasync, fh):
        self.alive()
        node = self.node_of(path, fh)
        node.synced_entries = dict(node.entries)
        return 0

    def flush(self, path, fh):
        return 0

    def unlink(self, path):
        self.alive()
        directory, name = self.parent(path)
        if name not in directory.entries:
            raise FuseOSError(errno.ENOENT)
        del directory.entries[name]

    def rename(self, old, new):
        self.alive()
        old_dir, old_name = self.parent(old)
        new_dir, new_name = self.parent(new)
        if old_name not in old_dir.entries:
            raise FuseOSError(errno.ENOENT)
        new_dir.entries[new_name] = old_dir.entries.pop(old_name)

    def chmod(self, path, mode):
        node = self.lookup(path)
        node.mode = (node.mode & ~0o7777) | (mode & 0o7777)

    def chown(self, path, uid, gid):
        pass

    def utimens(self, path, times=None):
        node = self.lookup(path)
        now = time.time()
        node.times = times or (now, now)


def main():
    mountpoint, control = sys.argv[1], sys.argv[2]
    fs = PowerCutFs(control)
    threading.Thread(target=fs.poll_control, daemon=True).start()
    FUSE(fs, mountpoint, foreground=True, nothreads=True, default_permissions=True)


if __name__ == "__main__":
    main()

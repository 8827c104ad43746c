#!/usr/bin/env python3
"""Build crius's test images deterministically and push them to the test registries.

Everything comes from Debian's /bin/busybox (busybox-static) and from data made
here: fixed mtimes, sorted entries, uid/gid 0 unless set, tar headers written by
hand (so hostile names stay verbatim). Built blobs are cached under
$CRIUS_TESTENV_DIR/cache, blobs already in the registry are skipped (HEAD), so a
second run uploads nothing. Writes $CRIUS_TESTENV_DIR/images.json.

Usage: images.py [--only NAME ...] [--no-push]
"""

import argparse
import base64
import fcntl
import gzip
import hashlib
import http.client
import json
import os
import subprocess
import sys
import urllib.parse

STATE_DIR = os.environ.get("CRIUS_TESTENV_DIR", "/var/lib/crius-testenv")
REGISTRY = os.environ.get("CRIUS_TEST_REGISTRY", "127.0.0.1:5100")
AUTH_REGISTRY = os.environ.get("CRIUS_TEST_AUTH_REGISTRY", "127.0.0.1:5101")
AUTH = ("crius", "crius-test")
BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "ls", "cat", "echo", "sleep", "true", "false", "env", "id"]
MTIME = 1704067200  # 2024-01-01T00:00:00Z
CREATED = "2024-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = {"gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip"}


# ---------------------------------------------------------------- entries


def F(path, data, mode=0o644, uid=0, gid=0):
    """A regular file entry."""
    if isinstance(data, str):
        data = data.encode()
    return {"path": path, "type": "f", "data": data, "mode": mode, "uid": uid, "gid": gid}


def D(path, mode=0o755, uid=0, gid=0):
    """A directory entry."""
    return {"path": path, "type": "d", "mode": mode, "uid": uid, "gid": gid}


def L(path, target, uid=0, gid=0):
    """A symlink entry."""
    return {"path": path, "type": "l", "link": target, "mode": 0o777, "uid": uid, "gid": gid}


def H(path, target):
    """A hardlink entry; target is a path earlier in the same layer."""
    return {"path": path, "type": "h", "link": target, "mode": 0o644, "uid": 0, "gid": 0}


def P(path, mode=0o644):
    """A FIFO entry."""
    return {"path": path, "type": "p", "mode": mode, "uid": 0, "gid": 0}


def WH(path):
    """A whiteout hiding path of the lower layers."""
    d, b = os.path.split(path)
    return F(os.path.join(d, ".wh." + b), b"", mode=0o644)


def OPQ(dirpath):
    """An opaque marker hiding everything below dirpath in the lower layers."""
    return F(dirpath + "/.wh..wh..opq", b"", mode=0o644)


def raw(entry):
    """Marks an entry to be written verbatim: no parents added, name not cleaned."""
    entry["raw"] = True
    return entry


def busybox_entries():
    """/bin/busybox from Debian's busybox-static plus applet symlinks, and /tmp."""
    with open(BUSYBOX, "rb") as f:
        data = f.read()
    ents = [D("bin"), F("bin/busybox", data, mode=0o755), D("tmp", mode=0o1777)]
    ents += [L("bin/" + a, "busybox") for a in APPLETS]
    return ents


def etc_entries():
    """/etc/passwd and /etc/group with root and nobody."""
    return [
        D("etc"),
        F("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        F("etc/group", "root:x:0:\nnobody:x:65534:\n"),
    ]


def groups_etc_entries():
    """/etc/passwd and /etc/group of critest's predefined-group image: user
    default-user (1000:1000) is also a member of group 50000 in /etc/group."""
    return [
        D("etc"),
        F("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
          "default-user:x:1000:1000:default-user:/home/default-user:/bin/sh\n"),
        F("etc/group", "root:x:0:\ndefault-user:x:1000:\n"
          "group-defined-in-image:x:50000:default-user\n"),
    ]


# ---------------------------------------------------------------- tar


def _octal(value, width):
    """A NUL-terminated octal tar number field of width bytes."""
    return ("%0*o" % (width - 1, value)).encode() + b"\0"


def _header(name, typeflag, mode=0o644, uid=0, gid=0, size=0, link=b""):
    """One 512-byte ustar header block (name and link already fit)."""
    h = bytearray(512)
    h[0:100] = name[:100].ljust(100, b"\0")
    h[100:108] = _octal(mode, 8)
    h[108:116] = _octal(uid, 8)
    h[116:124] = _octal(gid, 8)
    h[124:136] = _octal(size, 12)
    h[136:148] = _octal(MTIME, 12)
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[157:257] = link[:100].ljust(100, b"\0")
    h[257:265] = b"ustar\x0000"
    h[329:337] = _octal(0, 8)
    h[337:345] = _octal(0, 8)
    h[148:156] = ("%06o" % sum(h)).encode() + b"\0 "
    return bytes(h)


def _pad(data):
    """data padded with NULs to a multiple of 512 bytes."""
    return data + b"\0" * (-len(data) % 512)


def _pax(records):
    """A PAX extended header (typeflag x) carrying records, a dict of str."""
    body = b""
    for key, value in records.items():
        rec = " %s=%s\n" % (key, value)
        n = len(rec.encode()) + 1
        while len(str(n)) + len(rec.encode()) != n:
            n = len(str(n)) + len(rec.encode())
        body += str(n).encode() + rec.encode()
    return _header(b"././@PaxHeader", b"x", size=len(body)) + _pad(body)


def entry_tar(e):
    """The tar blocks of one entry (PAX header first when name/link is long)."""
    name = e["path"]
    if e["type"] == "d" and not name.endswith("/"):
        name += "/"
    link = e.get("link", "")
    pax = {}
    if len(name.encode()) > 100:
        pax["path"] = name
    if len(link.encode()) > 100:
        pax["linkpath"] = link
    flag = {"f": b"0", "d": b"5", "l": b"2", "h": b"1", "p": b"6"}[e["type"]]
    data = e.get("data", b"")
    out = _pax(pax) if pax else b""
    out += _header(name.encode(), flag, e["mode"], e["uid"], e["gid"], len(data), link.encode())
    return out + _pad(data)


def with_parents(entries):
    """Entries plus missing parent directories (0755 root), sorted by path."""
    byname = {}
    for e in entries:
        if not e.get("raw"):
            parts = e["path"].split("/")[:-1]
            for i in range(1, len(parts) + 1):
                byname.setdefault("/".join(parts[:i]), D("/".join(parts[:i])))
        byname[e["path"]] = e
    return [byname[k] for k in sorted(byname, key=lambda p: p.encode())]


def make_tar(entries):
    """An uncompressed tar of entries (sorted, parents added, fixed metadata)."""
    return b"".join(entry_tar(e) for e in with_parents(entries)) + b"\0" * 1024


# ---------------------------------------------------------------- expected listing


def merge(layers):
    """The merged tree (path -> entry) of layers, applied as overlay/OCI does."""
    tree = {}

    def drop(path, children_only=False):
        """Removes path (unless children_only) and everything below it."""
        for p in list(tree):
            if p.startswith(path + "/") or (p == path and not children_only):
                del tree[p]

    for entries in layers:
        entries = with_parents(entries)
        for e in entries:  # whiteouts apply to the lower layers only
            d, b = os.path.split(e["path"])
            if b == ".wh..wh..opq":
                drop(d, children_only=True)
            elif b.startswith(".wh."):
                drop(os.path.join(d, b[4:]))
        for e in entries:
            if os.path.basename(e["path"]).startswith(".wh."):
                continue
            old = tree.get(e["path"])
            if old and old["type"] == "d" and e["type"] != "d":
                drop(e["path"])
            if e["type"] == "h":
                e = dict(tree[e["link"]], path=e["path"])
            tree[e["path"]] = e
    return tree


def listing(tree):
    """The expected.txt text: `type mode uid gid size-or-target path`, sorted."""
    lines = []
    for p in sorted(tree, key=lambda p: p.encode()):
        e = tree[p]
        extra = {"f": lambda: str(len(e["data"])), "l": lambda: e["link"]}.get(e["type"], lambda: "-")()
        lines.append("%s %04o %d %d %s /%s\n" % (e["type"], e["mode"], e["uid"], e["gid"], extra, p))
    return "".join(lines)


# ---------------------------------------------------------------- blobs and images


def sha256(data):
    """The sha256:HEX digest of data."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Builder:
    """Builds blobs into a content-addressed cache and manifests from them."""

    def __init__(self, state_dir):
        """Uses state_dir/cache for blobs and compressed-layer lookups."""
        self.blob_dir = os.path.join(state_dir, "cache", "blobs")
        self.layer_dir = os.path.join(state_dir, "cache", "layers")
        os.makedirs(self.blob_dir, exist_ok=True)
        os.makedirs(self.layer_dir, exist_ok=True)

    def blob_path(self, digest):
        """The cache file of a blob."""
        return os.path.join(self.blob_dir, digest.split(":", 1)[1])

    def put(self, data):
        """Stores data as a blob; returns (digest, size)."""
        digest = sha256(data)
        path = self.blob_path(digest)
        if not os.path.exists(path):
            tmp = "%s.%d.tmp" % (path, os.getpid())
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, path)
        return digest, len(data)

    def layer(self, entries, comp, media_types, level=6):
        """A layer descriptor and its diff_id; compression is cached by diff_id."""
        tar = make_tar(entries)
        diff_id = sha256(tar)
        key = os.path.join(self.layer_dir, "%s.%s%d" % (diff_id[7:], comp, level))
        desc = None
        if os.path.exists(key):
            with open(key) as f:
                desc = json.load(f)
            if not os.path.exists(self.blob_path(desc["digest"])):
                desc = None
        if desc is None:
            if comp == "gzip":
                blob = gzip.compress(tar, compresslevel=level, mtime=0)
            elif comp == "zstd":
                blob = subprocess.run(["zstd", "-q", "-c", "-%d" % level, "--no-progress"],
                                      input=tar, stdout=subprocess.PIPE, check=True).stdout
            else:
                blob = tar
            digest, size = self.put(blob)
            desc = {"digest": digest, "size": size}
            tmp = "%s.%d.tmp" % (key, os.getpid())
            with open(tmp, "w") as f:
                json.dump(desc, f)
            os.rename(tmp, key)
        return dict(mediaType=media_types[comp], **desc), diff_id

    def image(self, layers, config=None, fmt="oci", comp="gzip", level=6,
              platform=("linux", "amd64", None), layer_annotations=None):
        """A single-platform image: {mediaType, data, digest, blobs, config}."""
        mtypes = DOCKER_LAYER if fmt == "docker" else OCI_LAYER
        descs, diff_ids = [], []
        for entries in layers:
            desc, diff_id = self.layer(entries, comp, mtypes, level)
            descs.append(desc)
            diff_ids.append(diff_id)
        os_, arch, variant = platform
        cfg = {
            "architecture": arch,
            "os": os_,
            "created": CREATED,
            "config": dict({"Env": [PATH_ENV]}, **(config or {})),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": CREATED, "created_by": "crius testenv images.py"}
                        for _ in layers],
        }
        if variant:
            cfg["variant"] = variant
        cdigest, csize = self.put(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode())
        mtype = DOCKER_MANIFEST if fmt == "docker" else OCI_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": mtype,
            "config": {"mediaType": DOCKER_CONFIG if fmt == "docker" else OCI_CONFIG,
                       "digest": cdigest, "size": csize},
            "layers": descs,
        }
        return self.manifest(mtype, manifest, [cdigest] + [d["digest"] for d in descs],
                             config=cdigest)

    def attestation(self, subject):
        """A buildx-like attestation manifest (unknown/unknown) for subject."""
        stmt = json.dumps({"_type": "https://in-toto.io/Statement/v0.1",
                           "predicateType": "https://spdx.dev/Document",
                           "subject": [{"name": "crius-testenv", "digest": {
                               "sha256": subject["digest"][7:]}}],
                           "predicate": {}}, sort_keys=True).encode()
        ldigest, lsize = self.put(stmt)
        cfg = {"architecture": "unknown", "os": "unknown", "config": {},
               "rootfs": {"type": "layers", "diff_ids": [ldigest]}}
        cdigest, csize = self.put(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": csize},
            "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": ldigest,
                        "size": lsize, "annotations": {
                            "in-toto.io/predicate-type": "https://spdx.dev/Document"}}],
        }
        return self.manifest(OCI_MANIFEST, manifest, [cdigest, ldigest], config=cdigest)

    def manifest(self, mtype, obj, blobs, config=None, children=None):
        """Serialises a manifest or index object into an image record."""
        data = json.dumps(obj, sort_keys=True, indent=2).encode()
        digest, size = self.put(data)
        return {"mediaType": mtype, "data": data, "digest": digest, "size": size,
                "blobs": blobs, "config": config, "children": children or []}

    def index(self, entries):
        """An OCI index of (image, platform dict, annotations) entries."""
        manifests = []
        for img, platform, annotations in entries:
            d = {"mediaType": img["mediaType"], "digest": img["digest"],
                 "size": img["size"], "platform": platform}
            if annotations:
                d["annotations"] = annotations
            manifests.append(d)
        obj = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        rec = self.manifest(OCI_INDEX, obj, [], children=[e[0] for e in entries])
        rec["platforms"] = {"/".join(filter(None, [p["os"], p["architecture"], p.get("variant")])):
                            img["digest"] for img, p, _ in entries}
        return rec


# ---------------------------------------------------------------- image definitions


def layers_image_layers():
    """The three layers of layers:latest (without /expected.txt)."""
    long_name = "long/" + "d" * 60 + "/" + "f" * 60 + ".txt"
    l1 = busybox_entries() + etc_entries() + [
        F("a/keep.txt", "keep\n"),
        F("a/gone.txt", "gone\n"),
        F("a/gonedir/inner.txt", "inner\n"),
        F("opq/old.txt", "old\n"),
        F("opq/sub/old2.txt", "old2\n"),
        F("recreate.txt", "old\n"),
        F("recreatedir/old.txt", "old\n"),
        F("replace", "i am a file\n"),
        F("dir2file/child.txt", "child\n"),
    ]
    l2 = [
        WH("a/gone.txt"),
        WH("a/gonedir"),
        F("a/new.txt", "new\n"),
        F("opq/-first.txt", "sorts before the opaque marker and must survive\n"),
        OPQ("opq"),
        F("opq/after.txt", "after\n"),
        WH("recreate.txt"),
        F("recreate.txt", "new\n"),
        WH("recreatedir"),
        F("recreatedir/new.txt", "new\n"),
        D("replace"),
        F("replace/child.txt", "file replaced by a dir\n"),
        L("links/rel", "../a/keep.txt"),
        L("links/abs", "/a/keep.txt"),
        L("links/dangling", "does-not-exist"),
        F("links/data.txt", "hardlinked\n"),
        H("links/zhard", "links/data.txt"),
        F("special/setuid", "#!/bin/sh\necho setuid\n", mode=0o4755),
        D("special/private", mode=0o700, uid=1000, gid=1000),
        F("special/private/secret.txt", "secret\n", mode=0o600, uid=1000, gid=1000),
        P("special/fifo"),
        F(long_name, "a name longer than 100 bytes\n"),
    ]
    l3 = [
        WH("a/new.txt"),
        F("dir2file", "dir replaced by a file\n"),
    ]
    return [l1, l2, l3]


def big_layers():
    """busybox plus 4 layers of 16 MiB pseudo-random data from a fixed seed."""
    layers, sums = [busybox_entries()], ""
    for i in range(4):
        data = hashlib.shake_256(b"crius-testenv-big-%d" % i).digest(16 << 20)
        layers.append([F("big/part%d.bin" % i, data)])
        sums += "%s  /big/part%d.bin\n" % (hashlib.sha256(data).hexdigest(), i)
    layers[-1].append(F("big/SHA256SUMS", sums))
    return layers


def hostile_layers(kind):
    """The single hostile layer of hostile-KIND:latest, names written verbatim."""
    if kind == "traversal":
        return [[raw(F("../../tmp/crius-escape-traversal", "escaped\n")),
                 raw(F("/tmp/crius-escape-abs", "escaped\n"))]]
    if kind == "symlink":
        return [[raw(L("escape", "/tmp")),
                 raw(F("escape/crius-escape-symlink", "escaped\n"))]]
    return [[raw(H("x", "../../tmp/crius-escape-hardlink"))]]


NAMES = ["busybox", "busybox-docker", "layers", "multiarch", "zstd", "uncompressed", "big",
         "hostile-traversal", "hostile-symlink", "hostile-hardlink", "private", "groups",
         "symlink-etc"]


def build_all(b, only):
    """Builds every image; returns [(registry, repo, tags, image record)]."""
    sh = {"Cmd": ["sh"]}
    out = []

    def want(name):
        """True when name was asked for (or no --only was given)."""
        return not only or name in only

    if want("busybox") or want("private"):
        img = b.image([busybox_entries(), etc_entries()], sh)
        if want("busybox"):
            out.append((REGISTRY, "crius/busybox", ["latest", "1.0"], img))
        if want("private"):
            out.append((AUTH_REGISTRY, "crius/private", ["latest"], img))
    if want("busybox-docker"):
        out.append((REGISTRY, "crius/busybox-docker", ["latest"],
                    b.image([busybox_entries(), etc_entries()], sh, fmt="docker")))
    if want("layers"):
        ls = layers_image_layers()
        text = listing(merge(ls))
        ls[2] = ls[2] + [F("expected.txt", text)]
        out.append((REGISTRY, "crius/layers", ["latest"],
                    b.image(ls, {"Cmd": ["cat", "/expected.txt"]})))
    if want("multiarch"):
        amd = b.image([busybox_entries(), [F("platform.txt", "linux/amd64\n")]], sh)
        arm = b.image([busybox_entries(), [F("platform.txt", "linux/arm64/v8\n")]], sh,
                      platform=("linux", "arm64", "v8"))
        att = b.attestation(amd)
        out.append((REGISTRY, "crius/multiarch", ["latest"], b.index([
            (amd, {"os": "linux", "architecture": "amd64"}, None),
            (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}, None),
            (att, {"os": "unknown", "architecture": "unknown"},
             {"vnd.docker.reference.digest": amd["digest"],
              "vnd.docker.reference.type": "attestation-manifest"}),
        ])))
    if want("zstd"):
        out.append((REGISTRY, "crius/zstd", ["latest"],
                    b.image([busybox_entries(), etc_entries()], sh, comp="zstd", level=3)))
    if want("uncompressed"):
        out.append((REGISTRY, "crius/uncompressed", ["latest"],
                    b.image([busybox_entries(), etc_entries()], sh, comp="none")))
    if want("groups"):
        out.append((REGISTRY, "crius/groups", ["latest"], b.image(
            [busybox_entries(), groups_etc_entries()], dict(sh, User="default-user"))))
    if want("symlink-etc"):
        # /etc climbs out of the root with an absolute target: whatever
        # crius puts at /etc/... (pod files, user lookups) must land in
        # the rootfs's /tmp/crius-escape-etc, never the host's.
        out.append((REGISTRY, "crius/symlink-etc", ["latest"], b.image(
            [busybox_entries(),
             [D("tmp/crius-escape-etc"), L("etc", "/../../../../../tmp/crius-escape-etc")]], sh)))
    if want("big"):
        out.append((REGISTRY, "crius/big", ["latest"], b.image(
            big_layers(), {"Cmd": ["busybox", "sha256sum", "-c", "/big/SHA256SUMS"]}, level=1)))
    if want("pause"):
        # A stand-in infra image for runtimes that need one (containerd in
        # the pod benchmark): PID 1 just sleeps.
        out.append((REGISTRY, "crius/pause", ["latest"], b.image(
            [busybox_entries()], {"Entrypoint": ["/bin/sleep", "2147483647"]})))
    for kind in ("traversal", "symlink", "hardlink"):
        if want("hostile-" + kind):
            out.append((REGISTRY, "crius/hostile-" + kind, ["latest"],
                        b.image(hostile_layers(kind))))
    return out


# ---------------------------------------------------------------- pushing


class Registry:
    """A minimal registry v2 HTTP client (plain HTTP, optional Basic auth)."""

    def __init__(self, addr, auth=None):
        """Connects lazily to addr (host:port)."""
        self.addr = addr
        self.conn = None
        self.headers = {}
        if auth:
            token = base64.b64encode(("%s:%s" % auth).encode()).decode()
            self.headers["Authorization"] = "Basic " + token

    def request(self, method, path, body=None, headers=None):
        """One request; returns (status, headers, body). Retries once on a dropped connection."""
        h = dict(self.headers, **(headers or {}))
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.addr, timeout=120)
            try:
                self.conn.request(method, path, body=body, headers=h)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, resp.headers, data
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def check(self, status, want, what, data):
        """Raises unless status is one of want."""
        if status not in want:
            raise RuntimeError("%s %s: HTTP %d %s" % (self.addr, what, status, data[:300]))

    def push_blob(self, repo, digest, path, mounts):
        """Uploads a blob unless present (HEAD); mounts it from another repo when possible."""
        st, _, data = self.request("HEAD", "/v2/%s/blobs/%s" % (repo, digest))
        if st == 200:
            return False
        if digest in mounts and mounts[digest] != repo:
            q = urllib.parse.urlencode({"mount": digest, "from": mounts[digest]})
            st, hdrs, data = self.request("POST", "/v2/%s/blobs/uploads/?%s" % (repo, q), b"")
            if st == 201:
                return False
        else:
            st, hdrs, data = self.request("POST", "/v2/%s/blobs/uploads/" % repo, b"")
        self.check(st, (202,), "POST upload " + repo, data)
        loc = urllib.parse.urlsplit(hdrs["Location"])
        with open(path, "rb") as f:
            body = f.read()
        sep = "&" if loc.query else "?"
        url = loc.path + (("?" + loc.query) if loc.query else "") + sep + \
            urllib.parse.urlencode({"digest": digest})
        st, _, data = self.request("PUT", url, body, {"Content-Type": "application/octet-stream",
                                                      "Content-Length": str(len(body))})
        self.check(st, (201,), "PUT blob %s %s" % (repo, digest), data)
        return True

    def push_manifest(self, repo, ref, img):
        """PUTs a manifest under ref unless the registry already has this digest there."""
        st, hdrs, _ = self.request("HEAD", "/v2/%s/manifests/%s" % (repo, ref),
                                   headers={"Accept": img["mediaType"]})
        if st == 200 and hdrs.get("Docker-Content-Digest") == img["digest"]:
            return False
        st, hdrs, data = self.request("PUT", "/v2/%s/manifests/%s" % (repo, ref), img["data"],
                                      {"Content-Type": img["mediaType"]})
        self.check(st, (201,), "PUT manifest %s:%s" % (repo, ref), data)
        if hdrs.get("Docker-Content-Digest") not in (None, img["digest"]):
            raise RuntimeError("registry digest %s != %s" % (hdrs["Docker-Content-Digest"],
                                                              img["digest"]))
        return True


def push(b, reg, repo, tags, img, mounts, stats):
    """Pushes img (children and blobs first) to reg/repo under tags."""
    for child in img["children"]:
        push(b, reg, repo, [child["digest"]], child, mounts, stats)
    for digest in img["blobs"]:
        if reg.push_blob(repo, digest, b.blob_path(digest), mounts.setdefault(reg.addr, {})):
            stats["blobs"] += 1
        mounts[reg.addr].setdefault(digest, repo)
    for tag in tags:
        if reg.push_manifest(repo, tag, img):
            stats["manifests"] += 1


def main():
    """Builds, pushes and writes images.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="image names to build (default: all)")
    ap.add_argument("--no-push", action="store_true", help="build into the cache only; print the digests instead of writing images.json")
    args = ap.parse_args()
    unknown = set(args.only or []) - set(NAMES)
    if unknown:
        ap.error("unknown image(s) %s; known: %s" % (" ".join(sorted(unknown)), " ".join(NAMES)))
    os.makedirs(STATE_DIR, exist_ok=True)
    lock = open(os.path.join(STATE_DIR, "images.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one builder/pusher at a time
    b = Builder(STATE_DIR)
    built = build_all(b, set(args.only or []))
    regs = {REGISTRY: Registry(REGISTRY), AUTH_REGISTRY: Registry(AUTH_REGISTRY, AUTH)}
    stats = {"blobs": 0, "manifests": 0}
    mounts = {}
    result = {}
    for addr, repo, tags, img in built:
        if not args.no_push:
            push(b, regs[addr], repo, tags, img, mounts, stats)
        for tag in tags:
            rec = {"digest": img["digest"]}
            if img["config"]:
                rec["config"] = img["config"]
            if "platforms" in img:
                rec["platforms"] = img["platforms"]
            result["%s/%s:%s" % (addr, repo, tag)] = rec
    if args.no_push:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    out = os.path.join(STATE_DIR, "images.json")
    if args.only and os.path.exists(out):
        with open(out) as f:
            result = dict(json.load(f), **result)
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.write("\n")
    os.rename(out + ".tmp", out)
    print("testenv: %d images, %d blobs and %d manifests uploaded; %s"
          % (len(result), stats["blobs"], stats["manifests"], out), file=sys.stderr)


if __name__ == "__main__":
    main()

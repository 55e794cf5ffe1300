"""Paths that may be URLs: a run's workdir, eval outputs and exports can live on gs:// or s3://.

Everything that writes under a workdir goes through `path()` (etils epath, which Orbax uses too),
never `pathlib.Path`, which would turn `gs://bucket/run` into a local directory named `gs:`.
Writers that need a local file (safetensors, TensorBoard, an appended JSONL) write into a
`Staging` directory and copy its files to the destination (`sync`), which is the destination
itself when that is local. Pure Python: no JAX.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from etils import epath

URL_SCHEMES = ("gs://", "s3://", "az://", "hf://")


def path(p) -> epath.Path:
    """A path or URL as an epath.Path (local paths stay local)."""
    return epath.Path(p)


def is_remote(p) -> bool:
    return os.fspath(p).startswith(URL_SCHEMES)


def write_text(p, text: str) -> None:
    """Write a whole text file (any filesystem), creating its directory."""
    p = path(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def copy_tree(src, dest) -> None:
    """Copy the files under local directory `src` into `dest` (any filesystem)."""
    dest = path(dest)
    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        target = dest if rel == "." else dest / rel
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            (target / name).write_bytes((epath.Path(root) / name).read_bytes())


class Staging:
    """A local directory standing in for `dest`: `dest` itself when local, else a temporary
    directory whose files `sync()` copies to `dest` (and `pull()` fetches from it first)."""

    def __init__(self, dest):
        self.dest = path(dest)
        self.remote = is_remote(dest)
        if self.remote:
            self.local = epath.Path(tempfile.mkdtemp(prefix="cotjax-staging-"))
        else:
            self.local = self.dest
            self.local.mkdir(parents=True, exist_ok=True)

    def pull(self, *names: str) -> None:
        """Copy these files from `dest` into the staging directory if they exist there."""
        if not self.remote:
            return
        for name in names:
            if (self.dest / name).exists():
                (self.local / name).write_bytes((self.dest / name).read_bytes())

    def sync(self) -> None:
        """Copy every staged file to `dest` (a no-op when local)."""
        if self.remote:
            copy_tree(self.local, self.dest)

    def close(self) -> None:
        self.sync()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)

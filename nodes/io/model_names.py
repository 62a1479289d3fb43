"""Finding a model file by the name a prompt or an image's parameters give it (A1111's rules).

A1111 names LoRAs and embeddings by their file name without extension, wherever they sit
under the folder (`ink` for `style/ink.safetensors`), and LoRAs also by their
`ss_output_name` metadata (the name they were trained under). Order here:

1. the exact relative path, with or without an extension (what our nodes always accepted);
2. the file name without extension, anywhere under the kind's folder(s);
3. the `ss_output_name` alias of a .safetensors file (when `alias_key` is given).

Two files that answer to the same name are an error listing both: A1111 silently takes one
of them, which makes an image impossible to reproduce.
"""
from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

from .errors import LoraLabError, ModelPathError
from .paths import list_names, resolve

log = logging.getLogger(__name__)

_ALIAS_CACHE: dict[tuple, str | None] = {}


class AmbiguousNameError(ModelPathError):
    """A bare name that several files answer to."""


def _exact(kind: str, name: str, extensions: tuple) -> Path | None:
    try:
        return resolve(kind, name)
    except ModelPathError as e:
        if "not found" not in str(e):
            raise  # absolute, '..', escaping links: refused, not looked up further
    if PurePosixPath(name.replace("\\", "/")).suffix.lower() not in extensions:
        for ext in extensions:
            try:
                return resolve(kind, name + ext)
            except ModelPathError:
                continue
    return None


def _stem(rel: str) -> str:
    p = PurePosixPath(rel)
    return p.name[: -len(p.suffix)] if p.suffix else p.name


def _alias(path: Path, alias_key: str) -> str | None:
    from .safetensors_io import read_header

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, alias_key)
    if key not in _ALIAS_CACHE:
        try:
            _, meta = read_header(path)
            _ALIAS_CACHE[key] = str(meta.get(alias_key) or "") or None
        except LoraLabError:
            _ALIAS_CACHE[key] = None  # unreadable files have no alias; loading them reports why
    return _ALIAS_CACHE[key]


def _one(kind: str, name: str, rels: list[str], how: str) -> Path | None:
    if len(rels) > 1:
        raise AmbiguousNameError(f"{kind} name {name!r} is ambiguous: {len(rels)} files match by {how} "
                                 f"({', '.join(sorted(rels))}); give the path inside the {kind} folder")
    return resolve(kind, rels[0]) if rels else None


def find_model_file(kind: str, name: str, extensions: tuple, alias_key: str | None = None) -> Path:
    """The file `name` refers to in the `kind` folder(s); ModelPathError when none or several do."""
    if not isinstance(name, str) or not name.strip():
        raise ModelPathError(f"empty {kind} name {name!r}")
    name = name.strip()
    found = _exact(kind, name, extensions)
    if found is not None:
        return found
    names = list_names(kind, extensions)
    want = _stem(name) if PurePosixPath(name).suffix.lower() in extensions else name
    if "/" not in name.replace("\\", "/"):
        hit = _one(kind, name, [r for r in names if _stem(r) == want], "file name")
        if hit is not None:
            return hit
    if alias_key:
        rels = [r for r in names if r.lower().endswith(".safetensors") and _alias(resolve(kind, r), alias_key) == name]
        hit = _one(kind, name, rels, alias_key)
        if hit is not None:
            log.info("%s %r found by its %s: %s", kind, name, alias_key, hit.name)
            return hit
    return resolve(kind, name)  # raises the usual 'not found' naming the folders

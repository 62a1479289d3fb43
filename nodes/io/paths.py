"""Model and output folders.

Inside ComfyUI the folders come from its `folder_paths` module ("checkpoints", "loras",
"vae", "embeddings", "input", "output"). Standalone they are `<models_dir>/checkpoints`,
`<models_dir>/loras`, `<models_dir>/vae`, `<models_dir>/embeddings`, `<input_dir>` and
`<output_dir>`, where models_dir / output_dir / input_dir come from, in order:
`standalone_dirs(...)` (the CLI's --models-dir / --output-dir / --input-dir), the environment
variables LORA_LAB_MODELS_DIR / LORA_LAB_OUTPUT_DIR / LORA_LAB_INPUT_DIR, and the defaults
`./models`, `./output` and `./input` (relative to the current working directory).

Every name is resolved inside its folder: absolute paths, `..` and symlinks that leave the
folder are refused with ModelPathError.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from pathlib import Path

from .errors import ModelPathError

KINDS = ("checkpoints", "loras", "vae", "embeddings", "input", "output")
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
LORA_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
VAE_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin", ".pth")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_NAME = 1024  # characters of a model name (relative path); each part at most 255 bytes (the file systems' limit)

_dirs: contextvars.ContextVar = contextvars.ContextVar("lora_lab_dirs", default=None)


def _comfy_folder_paths():
    """ComfyUI's folder_paths module when we run inside ComfyUI, else None."""
    if "folder_paths" in sys.modules and "comfy" in sys.modules:
        return sys.modules["folder_paths"]
    return None


@contextlib.contextmanager
def standalone_dirs(models_dir: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None,
                    input_dir: str | os.PathLike | None = None):
    """Use these folders (standalone mode) inside the `with` block."""
    token = _dirs.set((models_dir, output_dir, input_dir))
    try:
        yield
    finally:
        _dirs.reset(token)


def models_dir() -> Path:
    chosen = (_dirs.get() or (None, None, None))[0]
    return Path(chosen or os.environ.get("LORA_LAB_MODELS_DIR") or "models").absolute()


def output_dir() -> Path:
    fp = _comfy_folder_paths()
    if fp is not None and (_dirs.get() is None):
        return Path(fp.get_output_directory())
    chosen = (_dirs.get() or (None, None, None))[1]
    return Path(chosen or os.environ.get("LORA_LAB_OUTPUT_DIR") or "output").absolute()


def input_dir() -> Path:
    """Where LoadImage / LoadImageMask read (ComfyUI's input directory)."""
    fp = _comfy_folder_paths()
    if fp is not None and (_dirs.get() is None):
        return Path(fp.get_input_directory())
    chosen = (_dirs.get() or (None, None, None))[2]
    return Path(chosen or os.environ.get("LORA_LAB_INPUT_DIR") or "input").absolute()


def folders(kind: str) -> list[Path]:
    """Every folder configured for `kind` (ComfyUI may configure several)."""
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}; expected one of {KINDS}")
    if kind == "output":
        return [output_dir()]
    if kind == "input":
        return [input_dir()]
    fp = _comfy_folder_paths()
    if fp is not None and _dirs.get() is None:
        return [Path(p) for p in fp.get_folder_paths(kind)]
    return [models_dir() / kind]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_path_text(path, what: str) -> None:
    """Refuse a path no file system takes (a NUL byte, a part over 255 bytes), naming `what`
    (an option, an input) and the value, before anything is opened or created."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    if not isinstance(text, str):
        raise ModelPathError(f"{what} {path!r}: expected a path")
    if "\0" in text:
        raise ModelPathError(f"{what} {text!r} contains a NUL byte")
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in text.replace("\\", "/").split("/")):
        raise ModelPathError(f"{what} {text[:60]!r}... has a name part over 255 bytes ({len(text)} characters)")


def check_path_options(options: dict) -> None:
    """check_path_text for each {option name: value} given (None: not given)."""
    for option, value in options.items():
        if value is not None:
            check_path_text(value, option)


def resolve(kind: str, name: str, must_exist: bool = True) -> Path:
    """Resolve `name` inside the folder(s) of `kind`, refusing anything that leaves them."""
    if not isinstance(name, str) or not name.strip():
        raise ModelPathError(f"empty {kind} name {name!r}")
    if "\0" in name:
        raise ModelPathError(f"{kind} name {name!r} contains a NUL byte")
    if len(name) > MAX_NAME or any(len(part.encode("utf-8", "surrogatepass")) > 255
                                   for part in name.replace("\\", "/").split("/")):
        raise ModelPathError(f"{kind} name {name[:60]!r}... is too long ({len(name)} characters; a file "
                             f"name part may have 255 bytes, a name {MAX_NAME} characters)")
    rel = Path(name.replace("\\", "/"))
    if rel.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ModelPathError(f"{kind} name {name!r} is an absolute path; give a name inside the {kind} folder")
    if ".." in rel.parts:
        raise ModelPathError(f"{kind} name {name!r} leaves the {kind} folder ('..' is not allowed)")
    tried = []
    for folder in folders(kind):
        root = folder.resolve()
        candidate = (folder / rel)
        real = candidate.resolve()
        if not _inside(real, root):
            raise ModelPathError(
                f"{kind} name {name!r} resolves to {str(real)!r}, outside the {kind} folder {str(root)!r}"
            )
        try:
            found = real.exists()
        except (OSError, ValueError) as e:
            raise ModelPathError(f"{kind} name {name!r}: {e.strerror if isinstance(e, OSError) else e}") from None
        if not must_exist or found:
            return real
        tried.append(str(folder))
    raise ModelPathError(f"{kind} file {name!r} not found in {', '.join(tried) or 'no folder'}")


def confined(kind: str, path: str | os.PathLike) -> Path | None:
    """`path` resolved, when it is a file inside one of the folders of `kind` (following every
    link); None otherwise. For files read next to a model (sidecars): a link out of the
    folder would let anyone who can drop a link read any file through the info route."""
    try:
        real = Path(path).resolve()
        if not real.is_file():
            return None
    except (OSError, ValueError):
        return None
    return real if any(_inside(real, folder.resolve()) for folder in folders(kind)) else None


def list_names(kind: str, extensions: tuple = CHECKPOINT_EXTENSIONS) -> list[str]:
    """Names (relative, '/'-separated) of the files of `kind` with one of `extensions`."""
    names = set()
    for folder in folders(kind):
        if not folder.is_dir():
            continue
        root = folder.resolve()
        for dirpath, _dirnames, filenames in os.walk(folder, followlinks=True):
            for fn in filenames:
                p = Path(dirpath) / fn
                if p.suffix.lower() in extensions and _inside(p.resolve(), root):
                    names.add(p.relative_to(folder).as_posix())
            # diffusers-format folders count as checkpoints
        if kind == "checkpoints":
            for mi in folder.glob("**/model_index.json"):
                if _inside(mi.resolve(), root):
                    names.add(mi.parent.relative_to(folder).as_posix())
    return sorted(names)

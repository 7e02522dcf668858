"""Safe checkpoint readers: nothing stored in a checkpoint file is ever executed.

* TorchScript archives (OpenAI's releases) are read as the zip of tensors they are. ``data.pkl`` goes through
  an unpickler that knows only the tensor-rebuilding globals and turns TorchScript classes into inert
  records; which attributes are parameters and buffers is read from the ``__parameters__``/``__buffers__``
  lines of the archive's code files (read as text, never run). Tensor storages are memory-mapped straight
  from the zip, so tensors nobody touches (the text tower) never enter memory.
* ``torch.save`` files go through ``torch.load(weights_only=True)``, memory-mapped when they are zips.
* safetensors files go through safetensors.

Sizes a file states (zip member sizes, lengths and memo slots in ``data.pkl``, tensor extents) are checked against
the bytes it holds before anything is allocated for them, so a crafted file cannot make the reader take gigabytes.
"""

from __future__ import annotations

import ast
import io
import mmap
import os
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import CheckpointError, first_line, os_reason, shown
from .files import regular_file_size
from .spec import read_weight_map

EXPECTED = "expected an OpenAI CLIP .pt archive, a torch.save state dict or a .safetensors file"
WRAPPER_KEYS = ("state_dict", "model")
_ZIP_MAGIC = b"PK\x03\x04"
SHARD_INDEX_SUFFIX = ".safetensors.index.json"
_PICKLE_PROTO = 0x80
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file, by name, without executing anything stored in it.

    Reads OpenAI's fp16 TorchScript archives (as a zip, never through ``torch.jit.load``; names as
    ``torch.jit.load(path).state_dict()`` gives them), ``torch.save`` files (``weights_only=True``) and
    safetensors files, one or sharded (``model.safetensors.index.json``: the shards it names, beside it).
    ``state_dict``/``model`` wrappers and a ``module.`` prefix on every key are removed.
    Tensors of archives and zip pickles are memory-mapped: only what is used is read.

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a checkpoint, or needs code to load.
    """
    path = Path(path)
    if path.name.endswith(SHARD_INDEX_SUFFIX):
        return _read_shards(path)
    head = _read_head(path)
    if head.startswith(_ZIP_MAGIC):
        contents = _read_zip(path)
    elif _is_safetensors(head, path.stat().st_size):
        contents = _read_safetensors(path)
    elif head[0] == _PICKLE_PROTO:
        _check_legacy_pickles(path)
        contents = _torch_load(path, mmap_file=False)
    elif head[8:9] == b"{":
        raise CheckpointError(
            f"{path} is a truncated or corrupt safetensors file (its header claims more bytes than the file holds); {EXPECTED}"
        )
    else:
        raise CheckpointError(f"{path} is not a checkpoint (unknown file type); {EXPECTED}")
    return _unwrap(contents, path)


def _read_head(path: Path) -> bytes:
    """The first bytes of ``path``; a folder, a pipe (``<(...)``, which would block or be read once) or a device
    (``/dev/zero`` never ends) is refused before it is opened."""
    try:
        regular_file_size(path)
    except ValueError as error:
        raise CheckpointError(f"{first_line(error)}; {EXPECTED}") from None
    try:
        with path.open("rb") as file:
            head = file.read(16)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; {EXPECTED}") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({os_reason(error)})") from None
    if not head:
        raise CheckpointError(f"{path} is empty; {EXPECTED}")
    return head


def _is_safetensors(head: bytes, size: int) -> bool:
    """safetensors files start with the length of their JSON header, then the header's ``{``."""
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 8 + header_length <= size


def _check_legacy_pickles(path: Path) -> None:
    """A legacy (non-zip) ``torch.save`` file is five pickles (magic number, protocol, system info, the contents,
    the storage keys) followed by raw storage bytes: each pickle is checked before torch unpickles it."""
    size = path.stat().st_size
    with path.open("rb") as file:
        for _ in range(5):
            if file.tell() == size:  # a plain pickle: torch.load judges it
                break
            try:
                _check_pickle(file, size, "the pickle")
            except CheckpointError as error:
                raise CheckpointError(f"{path}: {error}") from None


def _read_shards(index: Path) -> dict[str, torch.Tensor]:
    """The tensors of a sharded safetensors checkpoint: every shard its index names, each a file beside it."""
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(read_weight_map(index).values())):
        if Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise CheckpointError(f"{index} names shard {shown(shard)}, not a .safetensors file beside it; {EXPECTED}")
        tensors.update(load_checkpoint(index.parent / shard))
    return tensors


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is a corrupt safetensors file ({first_line(error)}); {EXPECTED}") from None


def _weights_only_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's long weights_only message that names what was refused."""
    for line in str(error).splitlines():
        if "nsupported" in line or "not an allowed global" in line:
            return line.strip().rstrip(".")
    return "it needs more than tensors and plain containers"


def _torch_load(path: Path, mmap_file: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle protocol notices
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap_file)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused to unpickle ({_weights_only_reason(error)}); only tensors and plain containers are "
            "loaded, never code"
        ) from None
    except Exception as error:  # noqa: BLE001 - any failure to parse is a bad file
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({first_line(error)}); {EXPECTED}") from None


def _read_zip(path: Path) -> Any:
    try:
        archive = zipfile.ZipFile(path)
    except Exception as error:  # noqa: BLE001 - BadZipFile, EOFError, undecodable names, unknown zip versions...
        raise CheckpointError(f"{path} is a truncated or corrupt zip file ({first_line(error)}); {EXPECTED}") from None
    with archive:
        names = archive.namelist()
        records = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(records) != 1:
            raise CheckpointError(f"{path} is a zip file but not a PyTorch checkpoint (no <folder>/data.pkl); {EXPECTED}")
        top = records[0].split("/")[0]
        if f"{top}/constants.pkl" in names or any(name.startswith(f"{top}/code/") for name in names):
            return _read_torchscript(path, archive, top)
        try:
            data = _read_member(archive, records[0], path.stat().st_size)
            _check_pickle(data, len(data), records[0])
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None
        except Exception as error:  # noqa: BLE001 - a bad CRC, an undecodable name...: torch.load would fail too
            raise CheckpointError(f"{path} is a corrupt zip file ({first_line(error)}); {EXPECTED}") from None
    return _torch_load(path, mmap_file=True)


def _unwrap(contents: Any, path: Path) -> dict[str, torch.Tensor]:
    unwrapped = set()  # a pickle can make a wrapper that holds itself
    while isinstance(contents, Mapping) and id(contents) not in unwrapped:
        unwrapped.add(id(contents))
        inner = next((contents[key] for key in WRAPPER_KEYS if isinstance(contents.get(key), Mapping)), None)
        if inner is None:
            break
        contents = inner
    if not isinstance(contents, Mapping):
        raise CheckpointError(f"{path} holds a {type(contents).__name__}, not a state dict; {EXPECTED}")
    tensors = {key: value for key, value in contents.items() if isinstance(value, torch.Tensor)}
    odd_key = next((key for key in tensors if not isinstance(key, str)), None)
    if odd_key is not None:
        raise CheckpointError(f"{path} names a tensor by a {type(odd_key).__name__}, not a string; {EXPECTED}")
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors; {EXPECTED}")
    for key, tensor in tensors.items():
        _check_within_storage(key, tensor, path)
    if all(key.startswith("module.") for key in tensors):
        tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
    return tensors


def _check_within_storage(key: str, tensor: torch.Tensor, path: Path) -> None:
    """A tensor that claims more elements than its storage holds (zero or overlapping strides) is refused: a
    checkpoint's tensors never overlap, and copying such a view could take any amount of memory."""
    if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
        raise CheckpointError(
            f"{path}: tensor {key} of size {list(tensor.shape)} claims more elements than its storage holds "
            f"({tensor.untyped_storage().nbytes()} bytes); the file is corrupt"
        )


# --- TorchScript archives -------------------------------------------------------------------------------


class _ScriptObject:
    """Inert stand-in for an instance of a TorchScript class: it records its pickled state, nothing more."""

    qualified_name: ClassVar[str]
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


_script_classes: dict[str, type[_ScriptObject]] = {}


def _script_class(qualified_name: str) -> type[_ScriptObject]:
    if qualified_name not in _script_classes:
        name = qualified_name.rsplit(".", 1)[-1]
        _script_classes[qualified_name] = type(name, (_ScriptObject,), {"qualified_name": qualified_name})
    return _script_classes[qualified_name]


class _StorageType:
    """What ``torch.HalfStorage`` & co. stand for in a persistent id: just the dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _same(data: Any, *type_tag: Any) -> Any:
    """TorchScript's list builders and type-tag restorers return their data unchanged for our purpose."""
    return data


def _check_sizes(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, tuple) or not all(isinstance(v, int) and v >= 0 for v in values):
        raise CheckpointError(f"tensor {what} {shown(values, 60)} is not a tuple of non-negative ints")
    return values


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """Safe ``torch._utils._rebuild_tensor_v2``: a bounds-checked strided view of a memory-mapped storage."""
    if not isinstance(storage, torch.Tensor) or not isinstance(storage_offset, int) or storage_offset < 0:
        raise CheckpointError("a tensor record does not point at a storage")
    size, stride = _check_sizes(size, "size"), _check_sizes(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    if metadata:
        raise CheckpointError(f"tensor metadata {shown(metadata, 60)} (conjugate/negative bits) is not supported")
    extent = storage_offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True)) + 1 if all(size) else 0
    if extent > storage.numel():
        raise CheckpointError(f"a tensor of size {list(size)} reaches past the end of its storage (truncated file?)")
    return storage.as_strided(size, stride, storage_offset)


_SAFE_GLOBALS: dict[tuple[str, str], Callable] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch.jit._pickle", f"build_{kind}list"): _same for kind in ("int", "double", "bool", "tensor")},
    ("torch.jit._pickle", "restore_type_tag"): _same,
}


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` knowing only tensor-rebuilding globals; anything else is refused, not imported."""

    def __init__(self, file: io.BytesIO, load_storage: Callable[[tuple], torch.Tensor]) -> None:
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(f"{module}.{name}")
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        raise CheckpointError(
            f"the archive's data.pkl references {module}.{name}, which an archive of tensors never needs; "
            "refused (nothing from the file was run)"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        return self._load_storage(pid)


class _Storages:
    """Tensor storages ``<top>/data/<key>`` of an archive as 1-D tensors over a private map of the file."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, top: str) -> None:
        self.archive, self.top = archive, top
        with path.open("rb") as file:
            self.mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)  # writable copy-on-write view
        self.loaded: dict[str, torch.Tensor] = {}

    def __call__(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"unexpected storage reference {shown(pid, 80)} in data.pkl")
        _, storage_type, key, _location, numel = pid
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"storage {shown(key, 40)} has an invalid size {shown(numel, 40)}")
        if key not in self.loaded:
            self.loaded[key] = self._map(str(key), storage_type.dtype, numel)
        return self.loaded[key]

    def _map(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        member = f"{self.top}/data/{key}"
        try:
            info = self.archive.getinfo(member)
        except KeyError:
            raise CheckpointError(f"tensor storage {member} is missing from the archive (truncated or corrupt file)") from None
        nbytes = numel * dtype.itemsize
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"tensor storage {member} is compressed; PyTorch archives store tensors uncompressed")
        if info.file_size < nbytes:
            raise CheckpointError(f"tensor storage {member} holds {info.file_size} bytes but {nbytes} are needed")
        offset = self._data_offset(info)
        if offset + nbytes > len(self.mapped):
            raise CheckpointError(f"tensor storage {member} runs past the end of the file (truncated download?)")
        if numel == 0:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(self.mapped, dtype=dtype, count=numel, offset=offset)

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a stored member's bytes start: after its local header, whose extra field may differ."""
        header = self.mapped[info.header_offset : info.header_offset + _LOCAL_HEADER.size]
        if len(header) < _LOCAL_HEADER.size or header[:4] != _ZIP_MAGIC:
            raise CheckpointError(f"the zip entry of {info.filename} is corrupt")
        fields = _LOCAL_HEADER.unpack(header)
        name_length, extra_length = fields[-2], fields[-1]
        return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


class _ModuleTypes:
    """Which attributes of each TorchScript module class are parameters and buffers, from its code file."""

    _CLASS = re.compile(r"^class (\w+)\((\w*)\):", re.MULTILINE)

    def __init__(self, archive: zipfile.ZipFile, top: str, file_size: int) -> None:
        self.archive, self.top, self.file_size = archive, top, file_size
        self.declarations: dict[str, tuple[list[str], list[str]] | None] = {}

    def declaration(self, qualified_name: str) -> tuple[list[str], list[str]] | None:
        """``(parameters, buffers)`` of a module class, ``None`` for a class that is not a module."""
        if qualified_name not in self.declarations:
            self.declarations[qualified_name] = self._parse(qualified_name)
        return self.declarations[qualified_name]

    def _parse(self, qualified_name: str) -> tuple[list[str], list[str]] | None:
        module, _, name = qualified_name.rpartition(".")
        source = self._code(f"{self.top}/code/{module.replace('.', '/')}.py", qualified_name)
        headers = list(self._CLASS.finditer(source))
        for index, header in enumerate(headers):
            if header.group(1) != name:
                continue
            if header.group(2) != "Module":
                return None
            end = headers[index + 1].start() if index + 1 < len(headers) else len(source)
            body = source[header.end() : end]
            return self._names(body, "__parameters__"), self._names(body, "__buffers__")
        raise CheckpointError(f"the archive has no code for class {qualified_name}, so its tensors cannot be named")

    def _code(self, member: str, qualified_name: str) -> str:
        try:
            return _read_member(self.archive, member, self.file_size).decode("utf-8")
        except KeyError:
            raise CheckpointError(f"the archive has no code for class {qualified_name}, so its tensors cannot be named") from None

    @staticmethod
    def _names(body: str, field: str) -> list[str]:
        """A ``__parameters__ = ["a", "b", ]`` line as a list; absent means none (as torch's importer reads it)."""
        # [ \t], not \s: \s+ spans lines, and 300 000 blank lines would then take the search an hour
        match = re.search(rf"^[ \t]+{field} = (\[.*\])[ \t]*$", body, re.MULTILINE)
        if match is None:
            return []
        names = ast.literal_eval(match.group(1))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"unreadable {field} declaration in the archive's code")
        return names


def _read_member(archive: zipfile.ZipFile, name: str, file_size: int) -> bytes:
    """A member's bytes, refusing one that claims more than the whole file holds (a forged size or a zip bomb:
    the bytes would be allocated before anything is checked)."""
    info = archive.getinfo(name)
    claimed = max(info.file_size, info.compress_size)
    if claimed > file_size:
        raise CheckpointError(f"{name} claims {claimed} bytes, more than the whole file holds ({file_size})")
    return archive.read(info)


_MAX_PICKLE_ITEMS = 1_000_000  # a state dict of 1000 tensors unfolds into ~20 000
_IN_PLACE = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})  # the container stays itself


def _check_pickle(data: bytes | BinaryIO, size: int, name: str = "data.pkl") -> None:
    """Walk a pickle's opcodes without running them, refusing what would make unpickling (or reading what it built)
    take unbounded memory or time: lengths claiming more bytes than follow, memo slots past the pickle's size
    (the C unpickler allocates first), and objects whose shared references unfold into more than
    ``_MAX_PICKLE_ITEMS`` items (a tuple nested ``(t, t)`` 60 deep is 678 bytes, but hashing it never ends)."""
    stack: list = []
    memo: dict = {}
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                slot = len(memo) if opcode.name == "MEMOIZE" else int(cast(int, argument))
                if not 0 <= slot <= size:
                    raise CheckpointError(f"{name} stores into memo slot {slot} of a {size}-byte pickle")
                memo[slot] = stack[-1]
            elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(argument, [1]))
            elif opcode.name == "DUP":
                stack.append(stack[-1])
            else:
                _simulate(opcode, stack, name)
    except CheckpointError:
        raise
    except (ValueError, IndexError, TypeError) as error:  # genops' complaints; opcodes that misuse the stack
        raise CheckpointError(f"{name} is corrupt ({first_line(error)})") from None


def _simulate(opcode: pickletools.OpcodeInfo, stack: list, name: str) -> None:
    """Apply ``opcode`` to a stack of ``[unfolded size]`` cells (``None`` for a mark)."""
    before = opcode.stack_before
    popped = []
    if pickletools.markobject in before:
        while stack[-1] is not None:
            popped.append(stack.pop())
        stack.pop()
        below = before.index(pickletools.markobject)
    else:
        below = len(before)
    for _ in range(below):
        popped.append(stack.pop())
    if opcode.name in _IN_PLACE:
        container = popped.pop()
        container[0] += sum(cell[0] for cell in popped)
        made = container
    else:
        made = [1 + sum(cell[0] for cell in popped)]
    if made[0] > _MAX_PICKLE_ITEMS:
        raise CheckpointError(
            f"{name} builds an object of more than {_MAX_PICKLE_ITEMS} items from a few bytes of shared references "
            "(a pickle bomb); refused before unpickling"
        )
    stack.extend(None if kind is pickletools.markobject else made for kind in opcode.stack_after)


def _read_torchscript(path: Path, archive: zipfile.ZipFile, top: str) -> dict[str, torch.Tensor]:
    file_size = path.stat().st_size
    try:
        data = _read_member(archive, f"{top}/data.pkl", file_size)
        _check_pickle(data, len(data))
        root = _ArchiveUnpickler(io.BytesIO(data), _Storages(path, archive, top)).load()
        types = _ModuleTypes(archive, top, file_size)
        if not isinstance(root, _ScriptObject) or types.declaration(root.qualified_name) is None:
            raise CheckpointError(f"the archive holds a {type(root).__name__}, not a TorchScript module")
        return _module_state_dict(root, types)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except Exception as error:  # noqa: BLE001 - any failure to parse (bad CRC, code text, pickle) is a corrupt archive
        raise CheckpointError(f"{path}: corrupt TorchScript archive ({first_line(error)}); {EXPECTED}") from None


def _module_state_dict(root: _ScriptObject, types: _ModuleTypes) -> dict[str, torch.Tensor]:
    """The names and tensors ``torch.jit.load(...).state_dict()`` gives: per module its parameters, its
    buffers, then its submodules, recursively, each in declaration order."""
    tensors: dict[str, torch.Tensor] = {}
    pending, seen = [("", root)], set()
    while pending:
        prefix, module = pending.pop()
        if id(module) in seen:
            raise CheckpointError(f"module {prefix.rstrip('.')} appears twice in the module tree (a cycle?)")
        seen.add(id(module))
        declaration = types.declaration(module.qualified_name)
        if declaration is None:
            where = prefix.rstrip(".") or "<root>"
            raise CheckpointError(f"module {where} is of class {module.qualified_name}, which the archive does not define")
        parameters, buffers = declaration
        state = module.state
        if not isinstance(state, dict):  # the module restores itself with its own __setstate__ code
            if parameters or buffers:
                raise CheckpointError(
                    f"module {prefix.rstrip('.') or '<root>'} restores its tensors with its own code (__setstate__), "
                    "which is never run here; its tensors cannot be read"
                )
            continue  # no tensors of its own: torch.jit.load(...).state_dict() has nothing of it either
        for group in (parameters, buffers):
            for name in group:
                value = state.get(name)
                if value is not None and not isinstance(value, torch.Tensor):
                    raise CheckpointError(f"{prefix}{name} is declared a tensor but holds a {type(value).__name__}")
                if value is not None:
                    tensors[prefix + name] = value
        children = [
            (f"{prefix}{name}.", value)
            for name, value in state.items()
            if isinstance(value, _ScriptObject) and types.declaration(value.qualified_name) is not None
        ]
        pending.extend(reversed(children))
    return tensors
